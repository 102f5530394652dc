"""Durable runs: the coordinator is SIGKILLed in the middle of round 2 (after an update of that
round was accepted, while another client's upload of it is held back by a proxy), the same
command is started again on the same run folder, and the run ends with the final adapter
bit-identical to a fault-free run of the same seed; the records hold every round once. A
finished run folder is refused."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest

from fedlora.server.runlog import read_records
from procs import finish, free_port, start_client, start_server, tail, wait_until
from proxy import CutProxy
from tbevents import scalars

CLIENTS = ["client-0", "client-1", "client-2"]
ROUNDS = 3


def _config(tiny_model: Path, strategy: str, port: int) -> dict:
    return {"model": str(tiny_model), "strategy": strategy, "rounds": ROUNDS, "min_clients": 3,
            "clients": len(CLIENTS), "seed": 11, "port": port,
            "adapter": {"rank": 4, "alpha": 8.0, "dropout": 0.1},
            "training": {"max_steps": 3, "batch_size": 16, "learning_rate": 0.01},
            # top-k's error feedback is state the clients carry from round to round
            "codec": {"upload": ["topk:0.3", "zstd:3"]},
            # uploads of several chunks: the proxy holds one back after its first
            "chunk_bytes": 1024}


def _wait(what: str, cond, timeout: float, procs: list[subprocess.Popen], log: Path):
    """procs.wait_until, failing as a test assertion with the log's tail."""
    try:
        return wait_until(what, cond, timeout, procs)
    except (RuntimeError, TimeoutError) as e:
        raise AssertionError(f"{e}:\n" + tail(log)) from None


def _fault_free(run_dir: Path, tiny_model: Path, strategy: str) -> Path:
    server, address = start_server(run_dir, _config(tiny_model, strategy, 0))
    clients = [start_client(run_dir, address, c) for c in CLIENTS]
    codes = finish([server, *clients], timeout=600)
    assert codes == [0, 0, 0, 0], tail(run_dir / "logs" / "coordinator.log")
    return run_dir


def _killed_and_resumed(run_dir: Path, tiny_model: Path, strategy: str) -> dict:
    config = _config(tiny_model, strategy, free_port())  # the clients must find it again
    server, address = start_server(run_dir, config)
    # the last client's round-2 upload is held back until the restart, so round 2 cannot end
    # before the kill however fast the others are (it once did: the round lasts 0.3 s)
    proxy = CutProxy(address)
    proxy.hold_upload(2)
    held = CLIENTS[-1]
    clients = [start_client(run_dir, proxy.address if c == held else address, c) for c in CLIENTS]
    coord_log = run_dir / "logs" / "coordinator.log"
    try:
        _wait("the hold of " + held + "'s round-2 upload", proxy.held.is_set, 400, [server], coord_log)

        def first_upload_of_round_2():
            return next((r["client"] for r in read_records(run_dir / "metrics.jsonl")
                         if r["type"] == "upload" and r["round"] == 2), None)

        cid = _wait("an accepted upload in round 2", first_upload_of_round_2, 400, [server], coord_log)
        # its client has reported too (the line follows the report), so no report is lost
        # with the coordinator: clients do not retry a report yet
        client_log = run_dir / "logs" / f"{cid}.log"
        _wait("the report of " + cid, lambda: "round 2: loss" in client_log.read_text(), 60, clients,
              client_log)
        assert not any(r["type"] == "round" and r["round"] == 2
                       for r in read_records(run_dir / "metrics.jsonl"))
        server.kill()
        server.wait()
        killed_at = time.time()
        (run_dir / "coordinator.json").unlink()  # the killed process's; the new one writes its own
        server, _ = start_server(run_dir, config)  # the same command, the same folder
        restarted_at = time.time()
        proxy.release()  # the held client reconnects to the new coordinator

        def round_2_done():
            return any(r["type"] == "round" and r["round"] == 2 for r in read_records(run_dir / "metrics.jsonl"))

        _wait("round 2 after the restart", round_2_done, 400, [server], coord_log)
        recovered_at = time.time()
        codes = finish([server, *clients], timeout=600)
    finally:
        for p in (server, *clients):
            if p.poll() is None:
                p.kill()
        proxy.close()
    assert codes == [0, 0, 0, 0], tail(coord_log)
    assert cid != held
    figures = {"strategy": strategy, "killed_after_upload_of": cid,
               "seconds_to_restart": round(restarted_at - killed_at, 1),
               "seconds_from_kill_to_round_2": round(recovered_at - killed_at, 1)}
    (run_dir / "resume-figures.json").write_text(json.dumps(figures) + "\n")
    print(figures)
    return figures


@pytest.fixture(scope="module", params=["fedavg-lora", "flora"])
def runs(request, tmp_path_factory, tiny_model):
    strategy = request.param
    base = tmp_path_factory.mktemp(f"resume-{strategy}")
    reference = _fault_free(base / "reference", tiny_model, strategy)
    resumed = base / "resumed"
    figures = _killed_and_resumed(resumed, tiny_model, strategy)
    return reference, resumed, figures


def test_the_resumed_run_ends_with_the_fault_free_adapter_bit_for_bit(runs):
    reference, resumed, _ = runs
    name = Path("adapter") / "adapter_model.safetensors"
    assert (resumed / name).read_bytes() == (reference / name).read_bytes()
    for c in CLIENTS:  # and every client's last update (round 3) is the same
        upload = Path("state") / c / "last-upload.safetensors"
        assert (resumed / upload).read_bytes() == (reference / upload).read_bytes(), c


def test_each_round_is_recorded_once_and_the_redone_round_is_said(runs):
    _, resumed, _ = runs
    recs = read_records(resumed / "metrics.jsonl")
    assert [r["round"] for r in recs if r["type"] == "round"] == list(range(ROUNDS + 1))
    assert [(r["completed"], r["round"]) for r in recs if r["type"] == "resume"] == [(1, 2)]
    clients = [(r["round"], r["client"]) for r in recs if r["type"] == "client"]
    assert sorted(clients) == sorted((rnd, c) for rnd in range(1, ROUNDS + 1) for c in CLIENTS)
    # the event files too: rebuilt from the kept records at the restart, then followed
    tb = scalars(resumed / "tensorboard")
    assert [s for s, _ in tb["."]["test/accuracy"]] == list(range(ROUNDS + 1))
    for c in CLIENTS:
        assert [s for s, _ in tb[f"clients/{c}"]["client/bytes/up/payload_bytes"]] == list(range(1, ROUNDS + 1))
    summary = json.loads((resumed / "summary.json").read_text())
    assert summary["status"] == "complete" and summary["rounds_completed"] == ROUNDS
    assert summary["resumes"] == 1
    assert json.loads((resumed / "journal.json").read_text())["finished"] is True


def test_a_finished_run_folder_is_refused_in_one_line(runs):
    _, resumed, _ = runs
    p = subprocess.run([sys.executable, "-m", "fedlora.deploy.cli", "server", "--config",
                        str(resumed / "test-config.yaml")], capture_output=True, text=True, timeout=120)
    assert p.returncode == 2
    assert p.stderr.strip().count("\n") == 0 and "holds a finished run (3 of 3 rounds)" in p.stderr
    p = subprocess.run([sys.executable, "-m", "fedlora.deploy.cli", "server", "--config",
                        str(resumed / "test-config.yaml"), "--rounds", "4"],
                       capture_output=True, text=True, timeout=120)
    assert p.returncode == 2 and "holds a finished run" in p.stderr
