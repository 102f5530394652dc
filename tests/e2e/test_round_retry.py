"""A round with too few valid updates is retried with the same global state, and a client
that already holds that state (same digest) does not download it again."""

from __future__ import annotations

import time

import grpc
import pytest
import torch

from fedlora.proto.v1 import fedlora_pb2 as pb
from procs import finish, records, start_client, start_server, tail
from mallory import Mallory


@pytest.fixture(scope="module")
def retried(tmp_path_factory, tiny_model):
    run_dir = tmp_path_factory.mktemp("retry") / "run"
    server, address = start_server(run_dir, {
        "model": str(tiny_model), "rounds": 1, "min_clients": 2, "round_retries": 1, "seed": 3,
        "clients": [{"id": "client-0", "token": "t0"}, {"id": "mallory", "token": "tm"}],
        "training": {"max_steps": 2, "batch_size": 8}})
    honest = start_client(run_dir, address, "client-0", "t0")
    m = Mallory(address)
    try:
        m.join()
        end = time.time() + 300
        task = m.next_train(end)
        glob = m.download(task)
        bad = {k: torch.full_like(v, float("nan")) for k, v in glob.items()}
        m._try("attempt1", lambda: m.upload(task.round, m.blob(task.round, bad)))
        task2 = m.next_train(end)  # the retry of the same round
        zero_delta = {k: torch.zeros_like(v) for k, v in m.download(task2).items()}
        m._try("attempt2", lambda: m.upload(task2.round, m.blob(task2.round, zero_delta)))
        m.stub.Report(pb.ReportRequest(session_id=m.session, round=task2.round), timeout=30)
        codes = finish([server, honest], timeout=300)
    finally:
        for p in (server, honest):
            if p.poll() is None:
                p.kill()
    assert codes == [0, 0], tail(run_dir / "logs" / "coordinator.log")
    return run_dir, m.results, task, task2


def test_round_with_too_few_updates_is_retried(retried):
    run_dir, results, task, task2 = retried
    assert results["attempt1"][0] == grpc.StatusCode.INVALID_ARGUMENT
    assert results["attempt2"][0] == grpc.StatusCode.OK
    failed = records(run_dir, "round_failed")
    assert [(f["round"], f["attempt"]) for f in failed] == [(1, 0)]
    done = [r for r in records(run_dir, "round") if r["round"] == 1]
    assert done and done[0]["attempt"] == 1 and done[0]["accepted"] == 2


def test_same_global_state_is_not_downloaded_twice(retried):
    run_dir, _, task, task2 = retried
    assert task.plan.global_state.digest == task2.plan.global_state.digest
    honest = [r for r in records(run_dir, "client") if r["client"] == "client-0"]
    by_attempt = {r["attempt"]: r for r in honest}
    assert by_attempt[0]["down"]["payload_bytes"] > 0
    assert by_attempt[1]["down"]["payload_bytes"] == 0
    assert "down none (global state held)" in (run_dir / "logs" / "client-0.log").read_text()
