"""Mallory: a client in the test process that joins properly, then breaks the protocol's rules
over real gRPC, one at a time, and records the statuses it got (shared by the e2e tests)."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

import grpc
import torch

from fedlora.common.wire.blob import pack, unpack
from fedlora.common.wire.chunks import iter_chunks, sha256
from fedlora.common.wire.codec import Chain
from fedlora.common.wire.protocol import SESSION_METADATA
from fedlora.proto.v1 import fedlora_pb2 as pb
from fedlora.proto.v1 import fedlora_pb2_grpc as pbg

CHUNK = 1024
TOKEN = "tm"  # the token the tests configure for the id "mallory"


def beat(stub: pbg.CoordinatorStub, session: str, stop: threading.Event) -> None:
    """Keeps a session live until ``stop`` (the run waits for every live client to be planned
    or not, and gives up one silent for ``client_timeout_s``)."""
    while not stop.wait(2.0):
        try:
            stub.Heartbeat(pb.HeartbeatRequest(session_id=session), timeout=10)
        except grpc.RpcError:
            pass


class Mallory:
    """A client that joins properly, then breaks every rule once and records the statuses."""

    def __init__(self, address: str, token: str = TOKEN):
        self.token = token
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
        reply = self.stub.Join(pb.JoinRequest(client_id="mallory", token=self.token,
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
        return self.stub.Upload(iter(msgs), timeout=60,
                                metadata=((SESSION_METADATA, first.session_id),))

    def blob(self, rnd: int, tensors: dict[str, torch.Tensor]) -> bytes:
        return pack(tensors, {"round": rnd, "client": "mallory", "num_examples": 100,
                              "upload_kind": "delta"}, Chain.parse(["zstd:3"])).data

    def play(self, deadline: float, round_1_done: Callable[[], None] = lambda: None) -> None:
        """Every rule broken once; ``round_1_done`` is called once Mallory's round-1 refusals
        are all in (a test holding an honest client's upload back releases it there, so round 1
        is still open for each of them)."""
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
        round_1_done()
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
