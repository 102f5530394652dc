"""End to end over real gRPC sockets: a coordinator process, three honest client processes,
and a misbehaving client (this test process) that sends every kind of bad input.

One federation is run for the module; each test states one behaviour of it.
"""

from __future__ import annotations

import time
from pathlib import Path

import grpc
import pytest
import torch
from safetensors.torch import load_file

from fedlora.common.evaluate import EvalOptions
from fedlora.common.wire.blob import unpack
from mallory import CHUNK, TOKEN, Mallory
from procs import finish, records, start_client, start_server, tail
from proxy import CutProxy

HONEST = ["client-0", "client-1", "client-2"]
TOKENS = {"client-0": "t0", "client-1": "t1", "client-2": "t2", "mallory": TOKEN}
@pytest.fixture(scope="module")
def federation(tmp_path_factory, tiny_model):
    run_dir = tmp_path_factory.mktemp("fed") / "run"
    config = {
        "model": str(tiny_model), "rounds": 2, "min_clients": 3, "deadline_s": 300, "seed": 1,
        "clients": [{"id": c, "token": t} for c, t in TOKENS.items()],
        "chunk_bytes": CHUNK, "max_upload_factor": 2.0,
        "training": {"max_steps": 4, "batch_size": 16, "learning_rate": 0.01},
        "adapter": {"rank": 8, "alpha": 16},
    }
    server, address = start_server(run_dir, config)
    # client-2's round-1 upload is held back (if it comes first) until Mallory's round-1
    # refusals are in: round 1 stays open for all of them (the honest clients' round takes
    # well under a second)
    proxy = CutProxy(address)
    proxy.hold_upload(1)
    clients = [start_client(run_dir, proxy.address if c == HONEST[-1] else address, c, TOKENS[c])
               for c in HONEST]
    mallory = Mallory(address)
    try:
        mallory.play(time.time() + 400, round_1_done=proxy.release)
        codes = finish([server, *clients], timeout=300)
    finally:
        for p in [server, *clients]:
            if p.poll() is None:
                p.kill()
        proxy.close()
    assert codes == [0, 0, 0, 0], tail(run_dir / "logs" / "coordinator.log")
    return run_dir, {**mallory.results, "global2": mallory.global2}


EXPECTED_REFUSALS = {
    "unknown_client": (grpc.StatusCode.UNAUTHENTICATED, "client 'eve': unknown client id or wrong token"),
    "wrong_token": (grpc.StatusCode.UNAUTHENTICATED, "client 'client-0': unknown client id or wrong token"),
    "unknown_session": (grpc.StatusCode.UNAUTHENTICATED, "unknown or expired session"),
    "stale_round": (grpc.StatusCode.FAILED_PRECONDITION, "round 6 is not open"),
    "too_large": (grpc.StatusCode.RESOURCE_EXHAUSTED, "exceeds the plan's limit"),
    "corrupt_chunk": (grpc.StatusCode.DATA_LOSS, "chunk digest mismatch at offset 0"),
    "out_of_order_chunk": (grpc.StatusCode.OUT_OF_RANGE, "skips ahead of the acknowledged offset 0"),
    "blob_digest_mismatch": (grpc.StatusCode.DATA_LOSS, "blob digest mismatch"),
    "nan_update": (grpc.StatusCode.INVALID_ARGUMENT, "non-finite value"),
    "upload_after_final_refusal": (grpc.StatusCode.FAILED_PRECONDITION, "already refused"),
    "wrong_shape": (grpc.StatusCode.INVALID_ARGUMENT, "the plan says"),
    "late_update": (grpc.StatusCode.FAILED_PRECONDITION, "late update refused"),
}


@pytest.mark.parametrize("case", sorted(EXPECTED_REFUSALS))
def test_bad_input_is_refused_with_a_precise_status(federation, case):
    _, results = federation
    code, details = results[case]
    want_code, want_text = EXPECTED_REFUSALS[case]
    assert code == want_code, details
    assert want_text in details


def test_refused_chunks_leave_no_partial_upload_behind(federation):
    _, results = federation
    status, _ = results["status_after_refusals"]
    assert status.acked_offset == 0 and not status.complete


def test_rounds_complete_with_the_honest_clients(federation):
    run_dir, _ = federation
    rounds = [r for r in records(run_dir, "round") if r["round"] > 0]
    assert [r["round"] for r in rounds] == [1, 2]
    for r in rounds:
        assert r["accepted"] == 3 and r["refused"] == ["mallory"]


def _last_uploads(run_dir: Path) -> dict[str, tuple[dict[str, torch.Tensor], float]]:
    out = {}
    for cid in HONEST:
        tensors, meta = unpack((run_dir / "state" / cid / "last-upload.safetensors").read_bytes())
        assert meta["round"] == 2 and meta["upload_kind"] == "delta"
        out[cid] = (tensors, float(meta["num_examples"]))
    return out


def test_each_client_logs_one_line_per_round(federation):
    """A client's log is read by people: one line per round says what the round did (a
    terminal gets progress bars instead, client/progress.py)."""
    run_dir, _ = federation
    for c in HONEST:
        lines = (run_dir / "logs" / f"{c}.log").read_text().splitlines()
        for rnd in (1, 2):
            about = [ln for ln in lines if f" round {rnd}: " in ln]
            assert len(about) == 1 and "; down " in about[0] and "; up " in about[0], about


def test_global_adapter_is_the_weighted_average_of_the_updates(federation):
    """Clients upload deltas against the round's global state: the new global state is
    that state plus the n_k-weighted mean of the deltas, i.e. the weighted mean of the clients'
    weights."""
    run_dir, results = federation
    uploads = _last_uploads(run_dir)
    global2 = results["global2"]
    saved = load_file(str(run_dir / "adapter" / "adapter_model.safetensors"))
    total = sum(w for _, w in uploads.values())
    assert set(saved) == set(uploads["client-0"][0])
    for name, value in saved.items():
        direct = global2[name].double() + sum(t[name].double() * w for t, w in uploads.values()) / total
        torch.testing.assert_close(value, direct.float(), rtol=0, atol=1e-6)


def test_byte_counts_match_tensor_sizes(federation):
    run_dir, _ = federation
    uploads = _last_uploads(run_dir)
    raw = sum(t.numel() * t.element_size() for t in uploads["client-0"][0].values())
    recs = {r["client"]: r for r in records(run_dir, "client") if r["round"] == 2}
    for cid in HONEST:
        up, down = recs[cid]["up"], recs[cid]["down"]
        sent = (run_dir / "state" / cid / "last-upload.safetensors").stat().st_size
        assert up["tensor_bytes"] == raw and down["tensor_bytes"] == raw
        assert up["payload_bytes"] == sent
        n_chunks = -(-sent // CHUNK)
        assert sent < up["protobuf_bytes"] <= sent + 200 + 80 * n_chunks  # digests + offsets per chunk
        assert 0 < down["payload_bytes"] < down["protobuf_bytes"]


def test_summary_totals_equal_the_per_client_records(federation):
    import json

    run_dir, _ = federation
    summary = json.loads((run_dir / "summary.json").read_text())
    recs = records(run_dir, "client")
    for d in ("up", "down"):
        for level in ("tensor_bytes", "payload_bytes", "protobuf_bytes"):
            assert summary["bytes"][d][level] == sum(r[d][level] for r in recs)
    assert summary["status"] == "complete" and summary["rounds_completed"] == 2


def test_saved_adapter_loads_with_peft_and_scores_the_reported_accuracy(federation, tiny_model):
    import json

    from peft import PeftModel
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from fedlora.common.data import FederatedSplit, SplitPlan, load_trec
    from fedlora.common.tasks import get_task

    run_dir, _ = federation
    summary = json.loads((run_dir / "summary.json").read_text())
    base = AutoModelForSequenceClassification.from_pretrained(str(tiny_model), num_labels=6)
    model = PeftModel.from_pretrained(base, str(run_dir / "adapter"))
    tok = AutoTokenizer.from_pretrained(str(run_dir / "adapter"))
    test = FederatedSplit.make(load_trec(), SplitPlan(len(TOKENS), alpha=0.5, test_fraction=0.1, seed=1)).test()
    score = get_task("classification").evaluate(model, tok, test, EvalOptions(128, 48), "cpu")
    assert score.accuracy == pytest.approx(summary["final_accuracy"], abs=1e-9)
