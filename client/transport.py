"""The client's side of the wire: join, long-poll, and chunked, resumable transfers.

Transfers retry while they make progress and give up after ``no_progress_timeout_s`` without
any (NVFlare-style), never on a fixed wall clock: a 500 MB update on a slow link is fine,
a dead link is not. Refusals that retrying cannot fix (the plan says no) end the attempt.
"""

from __future__ import annotations

import logging
import os
import time

import grpc

from fedlora.common.wire.blob import Blob
from fedlora.common.wire.chunks import iter_chunks, sha256
from fedlora.common.channel import grpc_options
from fedlora.common.wire.protocol import PROTOCOL
from fedlora.common.wire.stats import TransferStats
from fedlora.proto.v1 import fedlora_pb2 as pb
from fedlora.proto.v1 import fedlora_pb2_grpc as pbg

log = logging.getLogger("fedlora.client")

RETRYABLE = {grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DATA_LOSS, grpc.StatusCode.OUT_OF_RANGE,
             grpc.StatusCode.DEADLINE_EXCEEDED, grpc.StatusCode.RESOURCE_EXHAUSTED,
             grpc.StatusCode.ABORTED, grpc.StatusCode.INTERNAL, grpc.StatusCode.UNKNOWN,
             grpc.StatusCode.CANCELLED}


class TransferFailed(RuntimeError):
    def __init__(self, message: str, code: grpc.StatusCode | None = None):
        super().__init__(message)
        self.code = code


class Connection:
    def __init__(self, address: str, no_progress_timeout_s: float = 120.0,
                 credentials: grpc.ChannelCredentials | None = None):
        """``credentials`` None is plaintext (the caller decided, and logged it)."""
        self.address = address
        self.channel = (grpc.insecure_channel(address, options=grpc_options()) if credentials is None
                        else grpc.secure_channel(address, credentials, options=grpc_options()))
        self.stub = pbg.CoordinatorStub(self.channel)
        self.no_progress_timeout_s = no_progress_timeout_s
        self.session = ""

    def close(self) -> None:
        self.channel.close()

    def join(self, client_id: str, token: str, profile: pb.DeviceProfile,
             connect_timeout_s: float) -> pb.JoinReply:
        """Joins, retrying while the coordinator is not up yet (UNAVAILABLE)."""
        end = time.time() + connect_timeout_s
        while True:
            try:
                reply = self.stub.Join(pb.JoinRequest(client_id=client_id, token=token,
                                                      profile=profile, protocol=PROTOCOL),
                                       timeout=30, wait_for_ready=True)
                self.session = reply.session_id
                return reply
            except grpc.RpcError as e:
                if e.code() not in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED) \
                        or time.time() > end:
                    raise TransferFailed(f"join refused: {e.code().name}: {e.details()}", e.code()) from None
                time.sleep(1.0)

    def task(self, last_round: int, wait_s: int = 30) -> pb.Task:
        return self.stub.GetTask(pb.TaskRequest(session_id=self.session, last_round=last_round,
                                                wait_seconds=wait_s), timeout=wait_s + 30)

    def report(self, rnd: int, metrics: dict[str, float], profile: pb.DeviceProfile | None = None,
               decline: str = "") -> None:
        req = pb.ReportRequest(session_id=self.session, round=rnd, metrics=metrics, decline_reason=decline)
        if profile is not None:
            req.profile.CopyFrom(profile)
        self.stub.Report(req, timeout=60)

    # ------------------------------------------------------------------ link probe
    def probe(self, size: int, chunk_bytes: int) -> tuple[float, float]:
        """(upload, download) bytes per second over a timed transfer of ``size`` bytes each way,
        with the same chunk messages the real transfers use."""
        block = os.urandom(min(size, chunk_bytes))

        def chunks():
            for off in range(0, size, chunk_bytes):
                data = block[: min(chunk_bytes, size - off)]
                yield pb.UploadChunk(session_id=self.session, offset=off, data=data)

        t0 = time.perf_counter()
        reply = self.stub.ProbeUpload(chunks(), timeout=600)
        up = reply.received / max(time.perf_counter() - t0, 1e-9)
        t0 = time.perf_counter()
        got = sum(len(c.data) for c in self.stub.ProbeDownload(
            pb.ProbeRequest(session_id=self.session, size=size), timeout=600))
        down = got / max(time.perf_counter() - t0, 1e-9)
        return up, down

    # ------------------------------------------------------------------ download
    def download(self, rnd: int, ref: pb.BlobRef) -> tuple[bytes, TransferStats]:
        buf = bytearray()
        stats = TransferStats()
        last_progress = time.time()
        while True:
            t0 = time.perf_counter()
            req = pb.DownloadRequest(session_id=self.session, round=rnd, offset=len(buf))
            stats.grpc_bytes += req.ByteSize()
            try:
                for chunk in self.stub.Download(req, timeout=None):
                    stats.grpc_bytes += chunk.ByteSize()
                    if chunk.offset != len(buf):
                        raise TransferFailed(f"download chunk at {chunk.offset}, expected {len(buf)}")
                    if sha256(chunk.data) != chunk.digest:
                        log.warning("download chunk at %d corrupt; resuming", chunk.offset)
                        break
                    buf.extend(chunk.data)
                    stats.payload_bytes += len(chunk.data)
                    last_progress = time.time()
            except grpc.RpcError as e:
                if e.code() not in RETRYABLE:
                    raise TransferFailed(f"download refused: {e.code().name}: {e.details()}", e.code()) from None
                log.warning("download interrupted at %d bytes (%s); resuming", len(buf), e.code().name)
            finally:
                stats.seconds += time.perf_counter() - t0
            if len(buf) == ref.size:
                data = bytes(buf)
                if sha256(data) != ref.digest:
                    raise TransferFailed("downloaded blob digest does not match the plan")
                return data, stats
            if time.time() - last_progress > self.no_progress_timeout_s:
                raise TransferFailed(f"download made no progress for {self.no_progress_timeout_s:g}s")
            time.sleep(0.5)

    # ------------------------------------------------------------------ upload
    def upload_status(self, rnd: int) -> pb.UploadStatusReply:
        return self.stub.UploadStatus(pb.UploadStatusRequest(session_id=self.session, round=rnd),
                                      timeout=60)

    def upload(self, rnd: int, blob: Blob, chunk_bytes: int) -> TransferStats:
        """Streams ``blob``, resuming from the coordinator's acknowledged offset after errors."""
        stats = TransferStats()
        last_progress = time.time()
        acked = -1
        while True:
            try:
                st = self.upload_status(rnd)
                if st.complete:
                    return stats
                start = st.acked_offset if st.total_size == blob.size else 0
            except grpc.RpcError as e:
                if e.code() not in RETRYABLE:
                    raise TransferFailed(f"upload status refused: {e.code().name}: {e.details()}", e.code()) from None
                start = 0 if acked < 0 else acked
            if start > acked:
                last_progress = time.time()
                acked = start
            t0 = time.perf_counter()
            try:
                reply = self.stub.Upload(self._chunks(rnd, blob, chunk_bytes, start, stats), timeout=None)
                stats.grpc_bytes += reply.ByteSize()
                if reply.complete:
                    return stats
            except grpc.RpcError as e:
                if e.code() not in RETRYABLE:
                    raise TransferFailed(f"upload refused: {e.code().name}: {e.details()}", e.code()) from None
                log.warning("upload interrupted (%s: %s); resuming", e.code().name, e.details())
            finally:
                stats.seconds += time.perf_counter() - t0
            if time.time() - last_progress > self.no_progress_timeout_s:
                raise TransferFailed(f"upload made no progress for {self.no_progress_timeout_s:g}s")
            time.sleep(0.5)

    def _chunks(self, rnd: int, blob: Blob, chunk_bytes: int, start: int, stats: TransferStats):
        first = True
        for off, data in iter_chunks(blob.data, chunk_bytes, start):
            msg = pb.UploadChunk(offset=off, data=data, digest=sha256(data))
            if first:
                msg.session_id, msg.round = self.session, rnd
                msg.total_size, msg.blob_digest = blob.size, blob.digest
                first = False
            stats.grpc_bytes += msg.ByteSize()
            stats.payload_bytes += len(data)
            yield msg

