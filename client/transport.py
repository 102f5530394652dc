"""The client's side of the wire: join, long-poll, heartbeat, and chunked, resumable transfers.

A coordinator that is unavailable, stalled or slow is a passing state, not an answer: every
call is retried after a capped, jittered backoff (:mod:`fedlora.common.backoff`); a session the
coordinator no longer knows (it restarted, or gave up on this client) is joined again, with the
same process instance, and the call repeated. The client gives up only when the coordinator has
not answered for ``coordinator_timeout_s`` (:class:`CoordinatorLost`), or, before the first
join, ``connect_timeout_s``.

Transfers resume from where they broke (the acknowledged offset up, the bytes held down) and
give up after ``no_progress_timeout_s`` without any progress (NVFlare-style), never on a fixed
wall clock: a 500 MB update on a slow link is fine, a dead link is not. An upload never sends an
empty stream: with every byte held, the client asks UploadStatus, which completes it.
"""

from __future__ import annotations

import logging
import math
import os
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from typing import TypeVar

import grpc

from fedlora.common.backoff import Backoff
from fedlora.common.channel import client_channel_options
from fedlora.common.wire.blob import Blob
from fedlora.common.wire.chunks import iter_chunks, sha256
from fedlora.common.wire.protocol import CALL_TIMEOUT_S, LONG_POLL_S, PROTOCOL, SESSION_METADATA
from fedlora.common.wire.stats import TransferStats
from fedlora.proto.v1 import fedlora_pb2 as pb
from fedlora.proto.v1 import fedlora_pb2_grpc as pbg

log = logging.getLogger("fedlora.client")

T = TypeVar("T")

# No answer yet: the coordinator is down, stalled, restarting, or the link broke mid-call.
TRANSIENT = frozenset({grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED,
                       grpc.StatusCode.CANCELLED, grpc.StatusCode.UNKNOWN,
                       grpc.StatusCode.INTERNAL, grpc.StatusCode.ABORTED})
# A transfer also resumes after a refused chunk or blob digest (the acknowledged prefix stands).
RETRYABLE = TRANSIENT | {grpc.StatusCode.DATA_LOSS, grpc.StatusCode.OUT_OF_RANGE,
                         grpc.StatusCode.RESOURCE_EXHAUSTED}




def session_metadata(session: str) -> tuple[tuple[str, str], ...]:
    """A streaming call's metadata: the coordinator checks the session before it reads."""
    return ((SESSION_METADATA, session),)


class CoordinatorError(RuntimeError):
    def __init__(self, message: str, code: grpc.StatusCode | None = None):
        super().__init__(message)
        self.code = code


class CallRefused(CoordinatorError):
    """The coordinator said no, and asking again cannot change that (the process ends)."""


class TransferFailed(CoordinatorError):
    """A transfer was refused or made no progress: this round's part is lost, the run goes on."""


class CoordinatorLost(CoordinatorError):
    """The coordinator has not answered for the configured time."""


class Progress:
    """When a transfer last moved a byte; read by the thread that decides to give up."""

    def __init__(self, clock: Callable[[], float]):
        self._clock = clock
        self.at = clock()

    def mark(self) -> None:
        self.at = self._clock()


class Connection:
    def __init__(self, address: str, credentials: grpc.ChannelCredentials | None = None, *,
                 no_progress_timeout_s: float = 120.0, coordinator_timeout_s: float = 600.0,
                 connect_timeout_s: float = 120.0, clock: Callable[[], float] = time.monotonic,
                 sleep: Callable[[float], None] = time.sleep, stub=None):
        """``credentials`` None is plaintext (the caller decided, and logged it); ``clock``,
        ``sleep`` and ``stub`` are for tests."""
        self.address = address
        self.channel = None
        if stub is None:
            opts = client_channel_options()
            self.channel = (grpc.insecure_channel(address, options=opts) if credentials is None
                            else grpc.secure_channel(address, credentials, options=opts))
            stub = pbg.CoordinatorStub(self.channel)
        self.stub = stub
        self.no_progress_timeout_s = no_progress_timeout_s
        self.coordinator_timeout_s = coordinator_timeout_s
        self.connect_timeout_s = connect_timeout_s
        self._clock = clock
        self._sleep = sleep
        self.instance = uuid.uuid4().hex  # this process, as opposed to another with the same id
        self.session = ""
        self.joined = False
        self.heartbeat_s = 0.0
        self.last_heard = clock()
        self._identity: tuple[str, str] = ("", "")
        self.profile = pb.DeviceProfile()  # sent with every (re)join; kept current by report()
        self._rejoin_lock = threading.Lock()
        self._stop = threading.Event()

    def close(self) -> None:
        self._stop.set()
        if self.channel is not None:
            self.channel.close()

    # ------------------------------------------------------------------ retries
    def _heard(self) -> None:
        self.last_heard = self._clock()

    def _pause(self, what: str, why: str, backoff: Backoff, progress: Progress | None) -> None:
        """Waits before the next try, unless it is time to give up: on a transfer without
        progress for ``no_progress_timeout_s``, or on the coordinator silent past its limit."""
        now = self._clock()
        if progress is not None and now - progress.at > self.no_progress_timeout_s:
            raise TransferFailed(f"{what} made no progress for {self.no_progress_timeout_s:g}s ({why})")
        silent = now - self.last_heard
        limit, name = ((self.coordinator_timeout_s, "coordinator_timeout_s") if self.joined
                       else (self.connect_timeout_s, "connect_timeout_s"))
        if silent > limit:
            raise CoordinatorLost(f"no answer from the coordinator at {self.address} for {silent:.0f}s "
                                  f"({name}={limit:g}); last error: {why}")
        delay = backoff.next()
        log.warning("%s: %s; retrying in %.1fs", what, why, delay)
        self._sleep(delay)

    def call(self, what: str, fn: Callable[[str], T], *, retry_on: frozenset = TRANSIENT,
             final: type[CoordinatorError] = CallRefused, progress: Progress | None = None,
             rejoin: bool = True) -> T:
        """``fn(session)`` until it returns. ``retry_on`` codes are retried after a backoff; an
        unknown session is joined again first (``rejoin``); any other code raises ``final``."""
        backoff = Backoff()
        while True:
            session = self.session
            try:
                out = fn(session)
                self._heard()
                return out
            except grpc.RpcError as e:
                self._failed(what, e, session, backoff, retry_on, final, progress, rejoin)

    def _failed(self, what: str, e: grpc.RpcError, session: str, backoff: Backoff,
                retry_on: frozenset, final: type[CoordinatorError], progress: Progress | None,
                rejoin: bool = True) -> None:
        """What a failed call leads to: a rejoin, a pause before the next try, or ``final``."""
        code = e.code()
        why = f"{code.name}: {e.details()}"
        if code == grpc.StatusCode.UNAUTHENTICATED and rejoin and self.joined:
            self._heard()  # it answered: it just does not know this session
            self.rejoin(session)
            return
        if code not in retry_on:
            self._heard()
            raise final(f"{what} refused: {why}", code) from None
        self._pause(what, why, backoff, progress)

    # ------------------------------------------------------------------ sessions
    def join(self, client_id: str, token: str, profile: pb.DeviceProfile) -> pb.JoinReply:
        """Joins, retrying while the coordinator is not up yet (``connect_timeout_s``)."""
        self._identity = (client_id, token)
        self.profile = profile
        return self._join()

    def _join(self) -> pb.JoinReply:
        client_id, token = self._identity
        reply = self.call("join", lambda _s: self.stub.Join(
            pb.JoinRequest(client_id=client_id, token=token, profile=self.profile,
                           protocol=PROTOCOL, instance=self.instance),
            timeout=CALL_TIMEOUT_S, wait_for_ready=True), rejoin=False)
        self.session = reply.session_id
        self.heartbeat_s = reply.spec.heartbeat_s
        self.joined = True
        return reply

    def rejoin(self, stale_session: str) -> None:
        """Joins again after the coordinator forgot ``stale_session`` (a restart, or it gave up
        on this client); a no-op if another thread already did."""
        with self._rejoin_lock:
            if self.session != stale_session:
                return
            log.warning("the coordinator no longer knows this session (restarted, or gave up on "
                        "this client): joining again")
            self._join()

    def start_heartbeat(self) -> None:
        """Sends Heartbeat every ``heartbeat_s`` from a daemon thread until :meth:`close`, so the
        coordinator hears this client while it trains. Failures are left to the main loop's
        calls, except an unknown session, which is joined again at once."""
        if self.heartbeat_s <= 0:  # a coordinator from before heartbeats
            return

        def beat() -> None:
            while not self._stop.wait(self.heartbeat_s):
                session = self.session
                try:
                    self.stub.Heartbeat(pb.HeartbeatRequest(session_id=session),
                                        timeout=max(self.heartbeat_s, 5.0))
                    self._heard()
                except grpc.RpcError as e:
                    if e.code() == grpc.StatusCode.UNIMPLEMENTED:
                        return
                    if e.code() == grpc.StatusCode.UNAUTHENTICATED:
                        try:
                            self.rejoin(session)
                        except CoordinatorError:
                            pass  # the main loop meets the same and decides

        threading.Thread(target=beat, name="heartbeat", daemon=True).start()

    def task(self, last_round: int, wait_s: int = LONG_POLL_S) -> pb.Task:
        # RESOURCE_EXHAUSTED: the coordinator still holds a poll of ours that broke; it ends
        return self.call("task", lambda s: self.stub.GetTask(
            pb.TaskRequest(session_id=s, last_round=last_round, wait_seconds=wait_s),
            timeout=wait_s + CALL_TIMEOUT_S),
            retry_on=TRANSIENT | {grpc.StatusCode.RESOURCE_EXHAUSTED})

    def report(self, rnd: int, metrics: dict[str, float], profile: pb.DeviceProfile | None = None,
               decline: str = "") -> None:
        """Sends the round's figures. One that was not measured (NaN: e.g. exact match where the
        run generates no answers) is left out: the coordinator refuses non-finite numbers, and
        the round's report with them."""
        metrics = {k: v for k, v in metrics.items() if math.isfinite(v)}
        if profile is not None:
            self.profile = profile

        def send(session: str) -> None:
            req = pb.ReportRequest(session_id=session, round=rnd, metrics=metrics, decline_reason=decline)
            if profile is not None:
                req.profile.CopyFrom(profile)
            self.stub.Report(req, timeout=CALL_TIMEOUT_S)

        self.call("report", send)

    # ------------------------------------------------------------------ link probe
    def probe(self, size: int, chunk_bytes: int) -> tuple[float, float]:
        """(upload, download) bytes per second over a timed transfer of ``size`` bytes each way,
        with the same chunk messages the real transfers use."""
        block = os.urandom(min(size, chunk_bytes))

        def chunks(session: str):
            for off in range(0, size, chunk_bytes):
                data = block[: min(chunk_bytes, size - off)]
                yield pb.UploadChunk(session_id=session, offset=off, data=data)

        def up(session: str) -> float:
            t0 = time.perf_counter()
            reply = self.stub.ProbeUpload(chunks(session), timeout=600,
                                          metadata=session_metadata(session))
            return reply.received / max(time.perf_counter() - t0, 1e-9)

        def down(session: str) -> float:
            t0 = time.perf_counter()
            got = sum(len(c.data) for c in self.stub.ProbeDownload(
                pb.ProbeRequest(session_id=session, size=size), timeout=600))
            return got / max(time.perf_counter() - t0, 1e-9)

        return self.call("probe", up), self.call("probe", down)

    # ------------------------------------------------------------------ download
    def download(self, rnd: int, ref: pb.BlobRef,
                 on_bytes: Callable[[int], None] | None = None) -> tuple[bytes, TransferStats]:
        """Fetches the plan's blob whole, resuming at the bytes held after errors; ``on_bytes``
        hears how many are held after each chunk (a progress bar)."""
        buf = bytearray()
        stats = TransferStats()
        progress = Progress(self._clock)
        backoff = Backoff()
        while True:
            t0 = time.perf_counter()
            session = self.session
            req = pb.DownloadRequest(session_id=session, round=rnd, offset=len(buf))
            stats.protobuf_bytes += req.ByteSize()
            why = "the stream ended early"
            try:
                for chunk in self.stub.Download(req, timeout=None):
                    stats.protobuf_bytes += chunk.ByteSize()
                    if chunk.offset != len(buf):
                        raise TransferFailed(f"download chunk at {chunk.offset}, expected {len(buf)}")
                    if sha256(chunk.data) != chunk.digest:
                        why = f"chunk at {chunk.offset} corrupt"
                        break
                    buf.extend(chunk.data)
                    stats.payload_bytes += len(chunk.data)
                    if on_bytes is not None:
                        on_bytes(len(buf))
                    progress.mark()
                    self._heard()
                    backoff.reset()
            except grpc.RpcError as e:
                log.warning("download interrupted at %d bytes (%s)", len(buf), e.code().name)
                self._failed("download", e, session, backoff, RETRYABLE, TransferFailed, progress)
                continue
            finally:
                stats.seconds += time.perf_counter() - t0
            if len(buf) == ref.size:
                data = bytes(buf)
                if sha256(data) != ref.digest:
                    raise TransferFailed("downloaded blob digest does not match the plan")
                return data, stats
            self._pause("download", why, backoff, progress)

    # ------------------------------------------------------------------ upload
    def upload(self, rnd: int, blob: Blob, chunk_bytes: int,
               on_bytes: Callable[[int], None] | None = None) -> TransferStats:
        """Streams ``blob``, resuming from the coordinator's acknowledged offset after errors.
        Progress is that offset growing; a stream that broke after running a while gives the
        status call after it a full ``no_progress_timeout_s`` too. ``on_bytes`` hears the
        offset each chunk sent reaches (a progress bar)."""
        stats = TransferStats()
        grew = Progress(self._clock)    # the acknowledged offset last grew
        active = Progress(self._clock)  # ... or a stream last ended
        backoff = Backoff()
        acked = -1
        while True:
            st = self.call("upload status", lambda s: self.stub.UploadStatus(
                pb.UploadStatusRequest(session_id=s, round=rnd), timeout=CALL_TIMEOUT_S),
                retry_on=RETRYABLE, final=TransferFailed, progress=active)
            if st.complete:
                return stats
            start = st.acked_offset if st.total_size == blob.size else 0
            if start > acked:
                grew.mark()
                active.mark()
                backoff.reset()
                acked = start
            elif self._clock() - grew.at > self.no_progress_timeout_s:
                raise TransferFailed(f"upload made no progress for {self.no_progress_timeout_s:g}s "
                                     f"({acked} of {blob.size} bytes acknowledged)")
            if start >= blob.size:  # every byte is held and being checked: ask again, send nothing
                self._pause("upload", "every byte held, not accepted yet", backoff, grew)
                continue
            t0 = time.perf_counter()
            session = self.session
            try:
                reply = self.stub.Upload(self._chunks(rnd, blob, chunk_bytes, start, stats, session,
                                                      on_bytes),
                                         timeout=None, metadata=session_metadata(session))
                stats.protobuf_bytes += reply.ByteSize()
                self._heard()
                if reply.complete:
                    return stats
            except grpc.RpcError as e:
                if e.code() != grpc.StatusCode.ALREADY_EXISTS:  # accepted already: status says so
                    log.warning("upload interrupted (%s: %s); resuming", e.code().name, e.details())
                    self._failed("upload", e, session, backoff, RETRYABLE, TransferFailed, None)
            finally:
                stats.seconds += time.perf_counter() - t0
                active.mark()

    def _chunks(self, rnd: int, blob: Blob, chunk_bytes: int, start: int, stats: TransferStats,
                session: str, on_bytes: Callable[[int], None] | None) -> Iterator[pb.UploadChunk]:
        first = True
        for off, data in iter_chunks(blob.data, chunk_bytes, start):
            msg = pb.UploadChunk(offset=off, data=data, digest=sha256(data))
            if first:
                msg.session_id, msg.round = session, rnd
                msg.total_size, msg.blob_digest = blob.size, blob.digest
                first = False
            stats.protobuf_bytes += msg.ByteSize()
            stats.payload_bytes += len(data)
            yield msg
            if on_bytes is not None:
                on_bytes(off + len(data))
