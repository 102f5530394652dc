"""``fedlora run``: a coordinator and N clients as separate OS processes on 127.0.0.1.

Transport: unless ``--insecure``, the command makes a CA and certificates in ``<run>/certs``
(``fedlora certs``) and runs the cluster on mutual TLS, each client with the certificate of
its own id, as a deployment across machines would.

Each process logs to ``<run>/logs/<name>.log``. The coordinator binds a free port and writes
it to ``coordinator.json``; clients are started against that address. On exit, error or
Ctrl-C every child is terminated (then killed) by PID: nothing outlives the command.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from fedlora.common.config import ConfigError, ServerConfig, TLSConfig, dump_config
from fedlora.common.storage import prepare_dir, write_atomic
from fedlora.common.tls import CA, SERVER, make_certs
from fedlora.deploy.live import LiveTable

COORDINATOR_START_TIMEOUT_S = 300.0


class Loopback:
    """Every process on 127.0.0.1 of this host: the default topology."""

    coordinator_host = "127.0.0.1"

    def setup(self) -> None: ...

    def teardown(self) -> None: ...

    def wrap(self, name: str, argv: list[str]) -> list[str]:
        return argv

    def limit_cpu(self, name: str, pid: int) -> None: ...

    def threads(self, name: str) -> int:
        return 0

    def describe(self) -> dict:
        return {"topology": "loopback"}


class Cluster:
    def __init__(self, cfg: ServerConfig, client_threads: int, topology=None):
        self.cfg = cfg
        self.topology = topology or Loopback()
        self.run_dir = cfg.run_dir.resolve()
        self.logs = self.run_dir / "logs"
        self.client_threads = client_threads or max(1, (os.cpu_count() or 1) // len(cfg.client_entries()))
        self.procs: dict[str, subprocess.Popen] = {}

    def _spawn(self, name: str, args: list[str]) -> subprocess.Popen:
        self.logs.mkdir(parents=True, exist_ok=True)
        out = (self.logs / f"{name}.log").open("ab")
        env = dict(os.environ, PYTHONUNBUFFERED="1", HF_HUB_OFFLINE="1")
        argv = self.topology.wrap(name, [sys.executable, "-m", "fedlora.deploy.cli", *args])
        proc = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                env=env)
        out.close()
        self.procs[name] = proc
        self.topology.limit_cpu(name, proc.pid)
        return proc

    def start(self) -> str:
        self.run_dir.mkdir(parents=True, exist_ok=True)
        for stale in ("coordinator.json", "metrics.jsonl", "summary.json"):
            (self.run_dir / stale).unlink(missing_ok=True)
        cfg_path = self.run_dir / "server-config.json"
        self.topology.setup()
        client_tls = self._tls()
        write_atomic(cfg_path, dump_config(self.cfg) + "\n")
        self._spawn("coordinator", ["server", "--config", str(cfg_path), "--run-dir", str(self.run_dir),
                                    "--host", self.topology.coordinator_host])
        address = self._wait_address()
        for entry in self.cfg.client_entries():
            threads = self.topology.threads(entry.id) or self.client_threads
            self._spawn(entry.id, ["client", "--server", address, "--id", entry.id, "--token", entry.token,
                                   "--threads", str(threads),
                                   "--state-dir", str(self.run_dir / "client-state"), *client_tls(entry.id)])
        write_atomic(self.run_dir / "cluster.json", json.dumps(
            {"address": address, "pids": {n: p.pid for n, p in self.procs.items()},
             **self.topology.describe()}, indent=2) + "\n")
        return address

    def _tls(self):
        """Certificates for this cluster (mutual TLS), or plaintext when asked; returns the
        client flags per id."""
        if self.cfg.insecure:
            return lambda cid: ["--insecure"]
        if self.cfg.tls.cert:
            raise ConfigError("config error: tls: `fedlora run` makes its own certificates in "
                              "<run>/certs; tls.* is for `fedlora server` (or pass --insecure)")
        ids = [e.id for e in self.cfg.client_entries()]
        files = make_certs(self.run_dir / "certs", ids, [self.topology.coordinator_host, "localhost"])
        ca = str(files[CA].cert)
        self.cfg = self.cfg.model_copy(update={"tls": TLSConfig(
            cert=str(files[SERVER].cert), key=str(files[SERVER].key), client_ca=ca)})
        return lambda cid: ["--ca-cert", ca, "--cert", str(files[cid].cert), "--key", str(files[cid].key)]

    def _wait_address(self) -> str:
        path = self.run_dir / "coordinator.json"
        end = time.time() + COORDINATOR_START_TIMEOUT_S
        while time.time() < end:
            if path.is_file():
                return json.loads(path.read_text())["address"]
            if self.procs["coordinator"].poll() is not None:
                raise RuntimeError("the coordinator exited during start-up: see "
                                   f"{self.logs / 'coordinator.log'}\n" + _tail(self.logs / "coordinator.log"))
            time.sleep(0.2)
        raise RuntimeError("the coordinator did not start within "
                           f"{COORDINATOR_START_TIMEOUT_S:g}s: see {self.logs / 'coordinator.log'}")

    def wait(self, live: LiveTable) -> int:
        coord = self.procs["coordinator"]
        while coord.poll() is None:
            live.refresh()
            time.sleep(0.5)
        live.refresh()
        end = time.time() + 30
        for p in self.procs.values():
            try:
                p.wait(timeout=max(0.1, end - time.time()))
            except subprocess.TimeoutExpired:
                pass
        return coord.returncode

    def stop(self) -> None:
        for p in self.procs.values():
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
        end = time.time() + 10
        for p in self.procs.values():
            try:
                p.wait(timeout=max(0.1, end - time.time()))
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
        self.topology.teardown()


def _tail(path: Path, lines: int = 15) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""


def _interrupt(signum, _frame):
    raise KeyboardInterrupt(signal.Signals(signum).name)


def run_local(cfg: ServerConfig, client_threads: int = 0, live: bool = True, topology=None) -> int:
    prepare_dir(cfg.run_dir.resolve(), "run folder")  # read-only, a file in the way, full: exit 2 now
    cluster = Cluster(cfg, client_threads, topology)
    table = LiveTable(cluster.run_dir, enabled=live)
    code = 1
    signal.signal(signal.SIGTERM, _interrupt)  # SIGTERM tears down like Ctrl-C
    signal.signal(signal.SIGINT, _interrupt)   # explicitly: a background job inherits SIGINT ignored
    try:
        address = cluster.start()
        table.start(f"coordinator {address}, {len(cfg.client_entries())} clients, "
                    f"strategy {cfg.strategy}, run folder {cluster.run_dir}")
        code = cluster.wait(table)
    except KeyboardInterrupt:
        print("interrupted: stopping the cluster", file=sys.stderr)
        code = 130
    except (RuntimeError, OSError) as e:
        print(f"fedlora run: {e}", file=sys.stderr)
        code = 1
    finally:
        table.stop()
        cluster.stop()
    table.print_summary()
    return code
