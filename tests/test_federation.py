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

from fedlora.common.wire.blob import pack, unpack
from fedlora.common.wire.chunks import iter_chunks, sha256
from fedlora.common.wire.codec import Chain
from fedlora.proto.v1 import fedlora_pb2 as pb
from fedlora.proto.v1 import fedlora_pb2_grpc as pbg
from procs import finish, records, start_client, start_server, tail

HONEST = ["client-0", "client-1", "client-2"]
TOKENS = {"client-0": "t0", "client-1": "t1", "client-2": "t2", "mallory": "tm"}
CHUNK = 1024


class Mallory:
    """A client that joins properly, then breaks every rule once and records the statuses."""

    def __init__(self, address: str):
        self.channel = grpc.insecure_channel(address)
        self.stub = pbg.CoordinatorStub(self.channel)
        self.results: dict[str, tuple[grpc.StatusCode, str]] = {}
        self.session = ""

    def _try(self, name: str, call) -> None:
        try:
            call()
            self.results[name] = (grpc.StatusCode.OK, "")
        except grpc.RpcError as e:
            self.results[name] = (e.code(), e.details())

    def join(self) -> None:
        reply = self.stub.Join(pb.JoinRequest(client_id="mallory", token=TOKENS["mallory"],
                                              profile=pb.DeviceProfile(num_examples=100)),
                               timeout=60, wait_for_ready=True)
        self.session = reply.session_id

    def next_train(self, deadline: float) -> pb.Task:
        while time.time() < deadline:
            task = self.stub.GetTask(pb.TaskRequest(session_id=self.session, wait_seconds=5), timeout=30)
            if task.kind in (pb.Task.TRAIN, pb.Task.DONE):
                return task
        raise TimeoutError("no task")

    def download(self, task: pb.Task) -> dict[str, torch.Tensor]:
        data = b"".join(c.data for c in self.stub.Download(
            pb.DownloadRequest(session_id=self.session, round=task.round), timeout=60))
        assert sha256(data) == task.plan.global_state.digest
        return unpack(data)[0]

    def upload(self, rnd: int, data: bytes, *, session: str | None = None, total: int | None = None,
               digest: str | None = None, mangle=None) -> pb.UploadReply:
        msgs = []
        for off, chunk in iter_chunks(data, CHUNK):
            m = pb.UploadChunk(offset=off, data=chunk, digest=sha256(chunk))
            msgs.append(m)
        if mangle:
            msgs = mangle(msgs)
        first = msgs[0]
        first.session_id = self.session if session is None else session
        first.round = rnd
        first.total_size = len(data) if total is None else total
        first.blob_digest = sha256(data) if digest is None else digest
        return self.stub.Upload(iter(msgs), timeout=60)

    def blob(self, rnd: int, tensors: dict[str, torch.Tensor]) -> bytes:
        return pack(tensors, {"round": rnd, "client": "mallory", "num_examples": 100,
                              "upload_kind": "delta"}, Chain.parse(["zstd:3"])).data

    def play(self, deadline: float) -> None:
        self._try("unknown_client", lambda: self.stub.Join(pb.JoinRequest(client_id="eve"), timeout=30))
        self._try("wrong_token", lambda: self.stub.Join(
            pb.JoinRequest(client_id="client-0", token="guess"), timeout=30))
        self.join()
        task = self.next_train(deadline)
        rnd = task.round
        good = self.download(task)
        data = self.blob(rnd, good)

        def corrupt(msgs):
            msgs[0].data = b"\x00" + msgs[0].data[1:]
            return msgs

        def skip_first(msgs):
            head, rest = msgs[0], msgs[1:]
            rest[0].session_id, rest[0].round = head.session_id, head.round
            return rest

        self._try("unknown_session", lambda: self.upload(rnd, data, session="not-a-session"))
        self._try("stale_round", lambda: self.upload(rnd + 5, data))
        self._try("too_large", lambda: self.upload(rnd, data, total=10**9))
        self._try("corrupt_chunk", lambda: self.upload(rnd, data, mangle=corrupt))
        self._try("out_of_order_chunk", lambda: self.upload(rnd, data, mangle=skip_first))
        self._try("blob_digest_mismatch", lambda: self.upload(rnd, data, digest=sha256(b"other")))
        self.results["status_after_refusals"] = (
            self.stub.UploadStatus(pb.UploadStatusRequest(session_id=self.session, round=rnd)), "")
        nan = dict(good)
        name = sorted(nan)[0]
        nan[name] = nan[name].clone()
        nan[name].view(-1)[0] = float("nan")
        self._try("nan_update", lambda: self.upload(rnd, self.blob(rnd, nan)))
        self._try("upload_after_final_refusal", lambda: self.upload(rnd, data))
        task = self.next_train(deadline)
        rnd2 = task.round
        self.global2 = self.download(task)
        wrong = dict(self.global2)
        key = next(k for k in sorted(wrong) if wrong[k].dim() == 2 and wrong[k].shape[0] != wrong[k].shape[1])
        wrong[key] = wrong[key].t().contiguous()
        self._try("wrong_shape", lambda: self.upload(rnd2, self.blob(rnd2, wrong)))
        while self.next_train(deadline).kind != pb.Task.DONE:
            pass
        self._try("late_update", lambda: self.upload(rnd2, self.blob(rnd2, good)))


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
    clients = [start_client(run_dir, address, c, TOKENS[c]) for c in HONEST]
    mallory = Mallory(address)
    try:
        mallory.play(time.time() + 400)
        codes = finish([server, *clients], timeout=300)
    finally:
        for p in [server, *clients]:
            if p.poll() is None:
                p.kill()
    assert codes == [0, 0, 0, 0], tail(run_dir / "logs" / "coordinator.log")
    return run_dir, {**mallory.results, "global2": mallory.global2}


EXPECTED_REFUSALS = {
    "unknown_client": (grpc.StatusCode.PERMISSION_DENIED, "unknown client id 'eve'"),
    "wrong_token": (grpc.StatusCode.UNAUTHENTICATED, "wrong token"),
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
        assert sent < up["grpc_bytes"] <= sent + 200 + 80 * n_chunks  # digests + offsets per chunk
        assert 0 < down["payload_bytes"] < down["grpc_bytes"]


def test_summary_totals_equal_the_per_client_records(federation):
    import json

    run_dir, _ = federation
    summary = json.loads((run_dir / "summary.json").read_text())
    recs = records(run_dir, "client")
    for d in ("up", "down"):
        for level in ("tensor_bytes", "payload_bytes", "grpc_bytes"):
            assert summary["bytes"][d][level] == sum(r[d][level] for r in recs)
    assert summary["status"] == "complete" and summary["rounds_completed"] == 2


def test_saved_adapter_loads_with_peft_and_scores_the_reported_accuracy(federation, tiny_model):
    import json

    from peft import PeftModel
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from fedlora.common.data import FederatedSplit, load_trec
    from fedlora.common.tasks import get_task

    run_dir, _ = federation
    summary = json.loads((run_dir / "summary.json").read_text())
    base = AutoModelForSequenceClassification.from_pretrained(str(tiny_model), num_labels=6)
    model = PeftModel.from_pretrained(base, str(run_dir / "adapter"))
    tok = AutoTokenizer.from_pretrained(str(run_dir / "adapter"))
    test = FederatedSplit.make(load_trec(), len(TOKENS), 0.5, 0.1, seed=1).test()
    score = get_task("classification").evaluate(model, tok, test, 128, 48, "cpu")
    assert score.accuracy == pytest.approx(summary["final_accuracy"], abs=1e-9)
