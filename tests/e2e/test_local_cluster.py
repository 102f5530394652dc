"""`fedlora run`: a local cluster of separate processes, logs per process, clean stop."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest

from procs import records, start_client, start_server, finish, tail
from tbevents import scalars


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:  # a zombie is dead for our purposes
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split()[2] != "Z"
    except OSError:
        return False


def _run(tmp_path, tiny_model, *extra):
    run_dir = tmp_path / "run"
    args = [sys.executable, "-m", "fedlora.deploy.cli", "run", "--model", str(tiny_model),
            "--clients", "3", "--min-clients", "2", "--run-dir", str(run_dir), "--no-live",
            "--local-steps", "3", "--batch-size", "16", "--seed", "2", *extra]
    return run_dir, subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def test_run_starts_one_process_per_role_and_logs_each(tmp_path, tiny_model):
    run_dir, p = _run(tmp_path, tiny_model, "--rounds", "2")
    out, _ = p.communicate(timeout=600)
    assert p.returncode == 0, out
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["rounds_completed"] == 2 and summary["status"] == "complete"
    assert f"final test accuracy: {summary['final_accuracy']:.4f}" in out
    cluster = json.loads((run_dir / "cluster.json").read_text())
    assert len(set(cluster["pids"].values())) == 4  # coordinator + 3 clients, all distinct
    for name in cluster["pids"]:
        assert (run_dir / "logs" / f"{name}.log").stat().st_size > 0
    assert not any(_alive(pid) for pid in cluster["pids"].values())
    assert (run_dir / "adapter" / "adapter_config.json").is_file()
    # TensorBoard event files: the test metric of each round, bytes per round, a sub-run per client
    tb = scalars(run_dir / "tensorboard")
    assert set(tb) == {".", *(f"clients/client-{i}" for i in range(3))}
    assert [s for s, _ in tb["."]["test/accuracy"]] == [0, 1, 2]
    assert [s for s, _ in tb["."]["bytes/up/payload_bytes"]] == [1, 2]
    assert all(v > 0 for _, v in tb["."]["bytes/down/payload_bytes"])
    for i in range(3):
        assert [s for s, _ in tb[f"clients/client-{i}"]["client/bytes/up/payload_bytes"]] == [1, 2]
        assert "client/local_accuracy" in tb[f"clients/client-{i}"]


def test_run_task_causal_lm_reports_exact_match_and_perplexity(tmp_path, tiny_llama):
    run_dir, p = _run(tmp_path, tiny_llama, "--task", "causal-lm", "--rounds", "1",
                      "--set", "generate_examples=4", "--set", "eval_examples=32")
    out, _ = p.communicate(timeout=600)
    assert p.returncode == 0, out
    summary = json.loads((run_dir / "summary.json").read_text())
    assert f"final test exact match: {summary['final_accuracy']:.4f}, perplexity " \
           f"{summary['final_perplexity']:.3f}" in out
    assert "round 1: clients 3/3" in out and ", ppl " in out
    adapter = json.loads((run_dir / "adapter" / "adapter_config.json").read_text())
    assert adapter["task_type"] == "CAUSAL_LM"


def test_interrupt_stops_every_process(tmp_path, tiny_model):
    run_dir, p = _run(tmp_path, tiny_model, "--rounds", "100000")  # tiny rounds take ~0.25 s: never done first
    end = time.time() + 300
    while not any(r["round"] >= 1 for r in _rounds(run_dir)):
        assert p.poll() is None and time.time() < end, p.stdout.read() if p.poll() is not None else "timeout"
        time.sleep(0.5)
    pids = json.loads((run_dir / "cluster.json").read_text())["pids"]
    p.send_signal(signal.SIGINT)
    p.communicate(timeout=60)
    time.sleep(0.5)
    assert not any(_alive(pid) for pid in pids.values())
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["status"] == "failed" and "interrupted" in summary["error"]


def _rounds(run_dir):
    try:
        return [r for r in records(run_dir, "round") if r["round"] > 0]
    except FileNotFoundError:
        return []


@pytest.fixture(scope="module")
def small_model(tmp_path_factory):
    from tiny import build_tiny_model

    return build_tiny_model(tmp_path_factory.mktemp("small") / "model", hidden=256, layers=2)


def test_full_fedavg_moves_updates_larger_than_grpc_message_limit(tmp_path, small_model):
    """Every weight travels (about 6 MB, uncompressed) in 1 MiB chunks: no 4 MiB limit applies."""
    run_dir = tmp_path / "run"
    server, address = start_server(run_dir, {
        "model": str(small_model), "strategy": "fedavg", "rounds": 1, "clients": 2,
        "min_clients": 2, "training": {"max_steps": 2, "batch_size": 8},
        "codec": {"upload": [], "download": []},
        "tensorboard": False})  # and no event files when they are turned off
    clients = [start_client(run_dir, address, f"client-{i}") for i in range(2)]
    codes = finish([server, *clients], timeout=600)
    assert codes == [0, 0, 0], tail(run_dir / "logs" / "coordinator.log")
    for rec in records(run_dir, "client"):
        assert rec["status"] == "accepted"
        assert rec["up"]["payload_bytes"] > 4 * 2**20 and rec["down"]["payload_bytes"] > 4 * 2**20
    assert not (run_dir / "tensorboard").exists()


def test_coordinator_serves_standard_grpc_health_and_stops_on_sigterm(tmp_path, tiny_model):
    import grpc
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    run_dir = tmp_path / "run"
    server, address = start_server(run_dir, {"model": str(tiny_model), "clients": 2, "min_clients": 1})
    try:
        stub = health_pb2_grpc.HealthStub(grpc.insecure_channel(address))
        for service in ("", "fedlora.v1.Coordinator"):
            reply = stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=30)
            assert reply.status == health_pb2.HealthCheckResponse.SERVING
        server.send_signal(signal.SIGTERM)
        assert server.wait(timeout=60) == 1  # stopped before any round: a failed run, recorded
        summary = json.loads((run_dir / "summary.json").read_text())
        assert "interrupted by signal SIGTERM" in summary["error"]
    finally:
        if server.poll() is None:
            server.kill()
