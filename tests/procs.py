"""Starting real coordinator and client processes for the integration tests."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import yaml

from fedlora.server.runlog import read_records


def cli(*args: str, log: Path) -> subprocess.Popen:
    log.parent.mkdir(parents=True, exist_ok=True)
    out = log.open("ab")
    env = dict(os.environ, PYTHONUNBUFFERED="1", HF_HUB_OFFLINE="1")
    p = subprocess.Popen([sys.executable, "-m", "fedlora.deploy.cli", *args], stdout=out,
                         stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env)
    out.close()
    return p


def start_server(run_dir: Path, config: dict) -> tuple[subprocess.Popen, str]:
    run_dir.mkdir(parents=True, exist_ok=True)
    cfg_path = run_dir / "test-config.yaml"
    transport = {} if "tls" in config or "insecure" in config else {"insecure": True}
    auth = {} if "open_run" in config or has_credentials(config) else {"open_run": True}
    cfg_path.write_text(yaml.safe_dump({"port": 0, "run_dir": str(run_dir), **transport, **auth,
                                        **config}))
    proc = cli("server", "--config", str(cfg_path), log=run_dir / "logs" / "coordinator.log")
    addr_file = run_dir / "coordinator.json"
    end = time.time() + 180
    while not addr_file.is_file():
        if proc.poll() is not None or time.time() > end:
            proc.kill()
            raise RuntimeError("coordinator did not start:\n" + tail(run_dir / "logs" / "coordinator.log"))
        time.sleep(0.1)
    return proc, json.loads(addr_file.read_text())["address"]


def has_credentials(config: dict) -> bool:
    """Whether a test's coordinator config authenticates its clients (a token per client, or
    mutual TLS); the others are open runs, as most tests need no credentials."""
    clients = config.get("clients")
    tokens = isinstance(clients, list) and all(isinstance(c, dict) and c.get("token") for c in clients)
    return tokens or bool(config.get("tls", {}).get("client_ca"))


def start_client(run_dir: Path, address: str, client_id: str, token: str = "", *extra: str,
                 verbose: bool = False) -> subprocess.Popen:
    """A client; plaintext (``--insecure``, as start_server makes the coordinator) unless
    ``extra`` brings TLS flags. ``verbose``: debug lines too, e.g. "round 1: training" as a
    round's training starts (a test that acts mid-round waits for it; at the default level a
    client logs one line per round, at its end)."""
    transport = [] if "--ca-cert" in extra else ["--insecure"]
    return cli(*(["--verbose"] if verbose else []), "client", "--server", address, "--id", client_id, f"--token={token}", "--threads", "1",
               "--state-dir", str(run_dir / "state"), *transport, *extra,
               log=run_dir / "logs" / f"{client_id}.log")


def finish(procs: list[subprocess.Popen], timeout: float) -> list[int]:
    end = time.time() + timeout
    codes = []
    for p in procs:
        try:
            codes.append(p.wait(timeout=max(0.1, end - time.time())))
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()
            codes.append(-9)
    return codes


def tail(path: Path, n: int = 40) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-n:])
    except OSError:
        return f"(no {path})"


def records(run_dir: Path, kind: str) -> list[dict]:
    """The records of ``kind``; read mid-run too (a line being written is skipped)."""
    path = run_dir / "metrics.jsonl"
    if not path.is_file():
        raise FileNotFoundError(path)
    return [r for r in read_records(path) if r["type"] == kind]


def wait_until(what: str, check, timeout: float, procs: list[subprocess.Popen] = ()):
    """Polls ``check()`` until it returns something truthy (returned); fails after ``timeout``
    seconds, or when one of ``procs`` has exited."""
    end = time.time() + timeout
    while time.time() < end:
        got = check()
        if got:
            return got
        if any(p.poll() is not None for p in procs):
            raise RuntimeError(f"a process exited while waiting for {what}")
        time.sleep(0.05)
    raise TimeoutError(f"timed out waiting for {what}")


def logged(path: Path, text: str) -> bool:
    try:
        return text in path.read_text(errors="replace")
    except OSError:
        return False


def recorded(run_dir: Path, kind: str, **fields) -> list[dict]:
    """The records of ``kind`` whose fields match (an empty list while there is no log yet)."""
    try:
        recs = records(run_dir, kind)
    except (OSError, ValueError):
        return []
    return [r for r in recs if all(r.get(k) == v for k, v in fields.items())]


def free_port() -> int:
    """A TCP port on 127.0.0.1 free a moment ago, for a process that must be told its port."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def alive(pid: int) -> bool:
    """Whether ``pid`` is a running process (a zombie is dead for our purposes)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split()[2] != "Z"
    except OSError:
        return False


CAUSAL_CLIENTS = ["client-0", "client-1"]


def run_causal(tmp_path_factory, tiny_llama, strategy: str, extra: dict | None = None,
               rounds: int = 1):
    """A finished causal-LM run: coordinator + 2 client processes, the tiny Llama, small
    bounded evaluation; returns the run folder and its round records (round 0 excluded)."""
    run_dir = tmp_path_factory.mktemp(strategy) / "run"
    server, address = start_server(run_dir, {
        "task": "causal-lm", "model": str(tiny_llama), "strategy": strategy, "rounds": rounds,
        "min_clients": 2, "clients": len(CAUSAL_CLIENTS), "seed": 3, "generate_examples": 8,
        "eval_examples": 64, "adapter": {"rank": 4, "alpha": 8},
        "training": {"max_steps": 2, "batch_size": 8, "learning_rate": 0.01}, **(extra or {})})
    clients = [start_client(run_dir, address, c) for c in CAUSAL_CLIENTS]
    codes = finish([server, *clients], timeout=400)
    assert codes == [0, 0, 0], tail(run_dir / "logs" / "coordinator.log")
    rounds_ = [r for r in records(run_dir, "round") if r["round"] > 0]
    assert len(rounds_) == rounds and rounds_[-1]["accepted"] == 2
    return run_dir, rounds_
