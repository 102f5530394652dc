"""gRPC handlers (grpc.aio coroutines): translate messages to calls on the engine, the sessions
and the transfers, map refusals to statuses, and count the serialized size of every message
where the stream is handled.

An open call costs the coordinator a coroutine, not a thread (:mod:`.rpcserver`). The event
loop never blocks: what may wait for the engine's condition, a disk or a decode is handed to
:class:`Workers`; session checks and the long poll's look at the board read without a lock
(:meth:`.Sessions.client`, :meth:`.Engine.task`), and a long poll sleeps until the engine says
a round opened or the run ended (:class:`Board`), not on every change of the engine's state.

An upload is admitted by the engine once, on its first message; its chunks go to the transfers
only, and the engine gets the one verified blob they put together, as soon as its last byte is
acknowledged (or, if that call broke first, on the next UploadStatus). Every call, chunk and
heartbeat marks its client as heard (:mod:`.sessions`).

Nothing waits on an unauthenticated peer: a streaming call (Upload, ProbeUpload) carries its
session in the call metadata (:data:`SESSION_METADATA`), checked before the handler reads, and
so waits, for the first message; without a known session it is refused UNAUTHENTICATED at once.
Open calls are bounded per client (:mod:`.calls`), and a stream that moves no message for
``stream_idle_s`` is cancelled. An upload refused is counted by the status sent
(:mod:`.metrics`): the run log records the accepted updates and the final refusals, not every
refused call."""

from __future__ import annotations

import asyncio
import logging
import os
import time
from collections.abc import AsyncIterator, Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, NoReturn, TypeVar

import grpc

from fedlora.common.errors import Refused, Status
from fedlora.common.tls import peer_common_name
from fedlora.common.wire.blob import Blob
from fedlora.common.wire.chunks import iter_chunks, sha256
from fedlora.common.wire.protocol import (LONG_POLL_MAX_S, MAX_CHUNK_BYTES, PROBE_MAX_BYTES,
                                          PROTOCOL, SESSION_METADATA)
from fedlora.proto.v1 import fedlora_pb2 as pb
from fedlora.proto.v1 import fedlora_pb2_grpc as pbg
from fedlora.server.calls import Calls
from fedlora.server.engine import Engine
from fedlora.server.liveness import SWEEP_S
from fedlora.server.metrics import Metrics
from fedlora.server.updates import DECODE_SLOTS

log = logging.getLogger("fedlora.server")

T = TypeVar("T")

_PROBE_BLOCK = os.urandom(MAX_CHUNK_BYTES)  # incompressible, reused: probes measure the link, not a codec
CALL_THREADS = 8  # bookkeeping under the engine's condition, chunk writes and reads, digests


class Workers:
    """The threads the handlers hand blocking work to. Bookkeeping (locked reads and writes,
    which may wait for an aggregation or a journal commit holding the engine's condition;
    chunks written to or read from spool files; digests) and the checking and folding of
    complete uploads (seconds for a full model, at most ``DECODE_SLOTS`` at once anyway) have
    pools of their own, so a burst of uploads never delays a report or a session's join. Their
    sizes are fixed: the coordinator's threads do not grow with its clients."""

    def __init__(self) -> None:
        self._calls = ThreadPoolExecutor(CALL_THREADS, thread_name_prefix="rpc-work")
        self._updates = ThreadPoolExecutor(DECODE_SLOTS, thread_name_prefix="rpc-updates")

    async def call(self, fn: Callable[..., T], *args: Any) -> T:
        return await asyncio.get_running_loop().run_in_executor(self._calls, fn, *args)

    async def update(self, fn: Callable[..., T], *args: Any) -> T:
        return await asyncio.get_running_loop().run_in_executor(self._updates, fn, *args)

    def close(self) -> None:
        self._calls.shutdown(wait=False, cancel_futures=True)
        self._updates.shutdown(wait=False, cancel_futures=True)


class Board:
    """Wakes the long polls when the engine says what they answer may have changed (a round
    opened, the run ended; told from any thread). Only then: a thousand waiting clients are not
    woken by every upload, report or join of the others."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self.version = 0
        self._changed = asyncio.Event()

    def changed(self) -> None:
        """From any thread."""
        try:
            self._loop.call_soon_threadsafe(self._bump)
        except RuntimeError:  # the loop closed: the server has stopped, nobody waits
            pass

    def _bump(self) -> None:
        self.version += 1
        event, self._changed = self._changed, asyncio.Event()
        event.set()

    async def wait(self, seen: int, timeout: float) -> None:
        """Returns once the board moved past version ``seen``, or after ``timeout`` seconds."""
        if self.version != seen:
            return
        try:
            await asyncio.wait_for(self._changed.wait(), timeout)
        except TimeoutError:
            pass


class CoordinatorService(pbg.CoordinatorServicer):
    def __init__(self, engine: Engine, calls: Calls, metrics: Metrics, workers: Workers,
                 board: Board, idle_s: float):
        self.engine = engine
        self.sessions = engine.sessions
        self.transfers = engine.transfers
        self.calls = calls
        self.metrics = metrics
        self.work = workers
        self.board = board
        self.idle_s = idle_s

    async def _abort(self, context: grpc.aio.ServicerContext, e: Refused, what: str,
                     upload: bool = False) -> NoReturn:
        """Ends the call with the refusal's status; ``upload``: an upload refused (counted)."""
        log.warning("%s refused: %s: %s", what, e.code.name, e.message)
        if upload:
            self.metrics.upload_refused(e.code)
        await context.abort(grpc.StatusCode[e.code.name], e.message)

    async def _bound(self, context, session: str, upload: bool = False) -> None:
        """Under mutual TLS a session is usable only with the certificate of the client that
        owns it: a client cannot act as another id, even holding its session id."""
        cn = peer_common_name(context)
        if cn is None:
            return
        try:
            cid = self.sessions.check_session(session)
        except Refused as e:
            await self._abort(context, e, "call", upload)
        if cid != cn:
            await self._abort(context, Refused(Status.PERMISSION_DENIED,
                                               f"certificate is for {cn!r}, the session belongs to another client"),
                              f"call from {cn!r}", upload)

    async def _stream_session(self, context, what: str, upload: bool = False) -> tuple[str, str]:
        """(session, client id) from a streaming call's metadata, checked before the stream is
        read: no session, or one nobody holds, is UNAUTHENTICATED at once."""
        session = next((v for k, v in (context.invocation_metadata() or ())
                        if k == SESSION_METADATA), "")
        if not isinstance(session, str) or not session:
            await self._abort(context, Refused(Status.UNAUTHENTICATED,
                                               f"no session in the call metadata ({SESSION_METADATA}): "
                                               "join first"), what, upload)
        await self._bound(context, session, upload)
        try:
            return session, self.sessions.check_session(session)
        except Refused as e:
            await self._abort(context, e, what, upload)

    async def _idle(self, context, kind: str, cid: str) -> NoReturn:
        log.warning("%s stream of client %s idle for %.0fs (stream_idle_s=%g): cancelled",
                    kind, cid, self.idle_s, self.idle_s)
        await context.abort(grpc.StatusCode.CANCELLED,
                            f"{kind} stream idle for {self.idle_s:g}s (stream_idle_s): cancelled")

    async def _read(self, messages: AsyncIterator[T], context, kind: str, cid: str) -> T | None:
        """The stream's next message (None at its end), waiting ``stream_idle_s`` at most."""
        try:
            return await asyncio.wait_for(anext(messages), self.idle_s)
        except StopAsyncIteration:
            return None
        except TimeoutError:
            await self._idle(context, kind, cid)

    async def _write(self, context, msg, kind: str, cid: str) -> None:
        """Sends ``msg`` once the peer has room for it, waiting ``stream_idle_s`` at most."""
        try:
            await asyncio.wait_for(context.write(msg), self.idle_s)
        except TimeoutError:
            await self._idle(context, kind, cid)

    async def Join(self, request: pb.JoinRequest, context) -> pb.JoinReply:
        if request.protocol and request.protocol != PROTOCOL:
            await context.abort(grpc.StatusCode.FAILED_PRECONDITION,
                                f"protocol {request.protocol!r} not supported; this coordinator speaks {PROTOCOL}")
        cn = peer_common_name(context)
        if cn is not None and cn != request.client_id:
            await self._abort(context, Refused(Status.PERMISSION_DENIED,
                                               f"certificate is for {cn!r}, not for client {request.client_id!r}"),
                              f"join of {request.client_id!r}")
        try:
            return await self.work.call(self.sessions.join, request.client_id, request.token,
                                        request.profile, request.instance)
        except Refused as e:
            await self._abort(context, e, f"join of {request.client_id!r}")

    async def GetTask(self, request: pb.TaskRequest, context) -> pb.Task:
        await self._bound(context, request.session_id)
        try:
            cid = self.sessions.check_session(request.session_id)
            with self.calls.hold(cid, "task"):
                return await self._long_poll(request)
        except Refused as e:
            await self._abort(context, e, "task")

    async def _long_poll(self, request: pb.TaskRequest) -> pb.Task:
        """A plan as soon as the client has one, DONE at the end, else WAIT after
        ``wait_seconds``. While the call is held the client counts as heard (looked at every
        ``SWEEP_S``), so a long poll never makes a client look silent; a client that hangs up
        cancels this coroutine, and stops counting at once."""
        loop = asyncio.get_running_loop()
        end = loop.time() + max(0.0, min(request.wait_seconds, LONG_POLL_MAX_S))
        while True:
            seen = self.board.version
            task = self.engine.task(request.session_id)
            if task is not None:
                return task
            left = end - loop.time()
            if left <= 0:
                return pb.Task(kind=pb.Task.WAIT, retry_after_ms=200)
            await self.board.wait(seen, min(left, SWEEP_S))

    async def Heartbeat(self, request: pb.HeartbeatRequest, context) -> pb.HeartbeatReply:
        await self._bound(context, request.session_id)
        try:
            self.sessions.check_session(request.session_id)  # marks the client as heard
        except Refused as e:
            await self._abort(context, e, "heartbeat")
        return pb.HeartbeatReply()

    async def Download(self, request: pb.DownloadRequest, context) -> None:
        await self._bound(context, request.session_id)
        try:
            cid, blob = await self.work.call(self.engine.download_blob, request.session_id,
                                             request.round)
            with self.calls.hold(cid, "download"):
                await self._download(request, context, cid, blob)
        except Refused as e:
            await self._abort(context, e, "download")

    async def _download(self, request: pb.DownloadRequest, context, cid: str, blob: Blob) -> None:
        if request.offset > blob.size:
            await context.abort(grpc.StatusCode.OUT_OF_RANGE,
                                f"offset {request.offset} beyond the blob's {blob.size} bytes")
        pieces = iter_chunks(blob.data, self.engine.spec.chunk_bytes, start=request.offset)
        sent = protobuf_bytes = 0
        t0 = time.perf_counter()
        try:
            protobuf_bytes += request.ByteSize()
            while (msg := await self.work.call(_next_chunk, pieces, blob)) is not None:
                protobuf_bytes += msg.ByteSize()
                sent += len(msg.data)
                self.sessions.heard(cid)
                await self._write(context, msg, "download", cid)
        finally:
            await self.work.call(self.transfers.sent, cid, request.round, blob, sent, protobuf_bytes,
                                 time.perf_counter() - t0)

    async def Upload(self, request_iterator, context) -> pb.UploadReply:
        t0 = time.perf_counter()  # the call starts before its first chunk has arrived
        session, cid = await self._stream_session(context, "upload", upload=True)
        try:
            with self.calls.hold(cid, "upload"):
                return await self._upload(request_iterator, context, session, cid, t0)
        except Refused as e:
            await self._abort(context, e, f"upload from {cid!r}", upload=True)

    async def _upload(self, messages, context, session: str, cid: str, t0: float) -> pb.UploadReply:
        first = await self._read(messages, context, "upload", cid)
        if first is None:
            raise Refused(Status.INVALID_ARGUMENT, "empty upload stream")
        _same_session(first, session)
        rnd = first.round
        part = await self.work.call(self._admit, first)
        received = protobuf_bytes = 0
        mark = t0

        async def record() -> None:
            """The call's bytes not yet counted go to the round's stats: before the hand-over too,
            since the round may settle and write its records while this stream stays open (it
            broke after its last byte and never closed)."""
            nonlocal received, protobuf_bytes, mark
            now = time.perf_counter()
            await self.work.call(self.transfers.received, cid, rnd, received, protobuf_bytes,
                                 now - mark)
            received = protobuf_bytes = 0
            mark = now

        try:
            msg = first
            while msg is not None:
                protobuf_bytes += msg.ByteSize()
                received += len(msg.data)
                self.sessions.heard(cid)
                if msg.data or msg.offset:
                    # now, not at the close: the stream may break after its last byte
                    if await self.work.call(self._add, part, msg):
                        await record()
                        await self._hand_over(cid, rnd)
                msg = await self._read(messages, context, "upload", cid)
            status = await self.work.call(self.transfers.status, cid, rnd)
            reply = pb.UploadReply(received=part.acked, complete=status.complete,
                                   message="accepted" if status.complete else
                                   f"{part.acked} of {part.total_size} bytes held")
            protobuf_bytes += reply.ByteSize()
            return reply
        finally:
            await record()

    def _admit(self, first: pb.UploadChunk):
        """The upload's declaration checked by the engine before any byte of it is kept; its
        partial upload."""
        cid = self.engine.admit_upload(first.session_id, first.round, first.total_size,
                                       first.blob_digest)
        return self.transfers.upload(cid, first.round, first.total_size, first.blob_digest)

    def _add(self, part, msg: pb.UploadChunk) -> bool:
        """Keeps a chunk; whether the upload is now whole."""
        self.transfers.add(part, msg.offset, msg.data, msg.digest)
        return part.complete

    async def _hand_over(self, cid: str, rnd: int) -> None:
        """Gives the client's whole blob to the engine, if no other call has (a second stream
        of the same client, or UploadStatus after a stream broke past its last byte). Only a
        final refusal keeps it from being handed over again. It runs to its end even when the
        call is cancelled meanwhile (its client hung up): a blob taken is always submitted or
        put back."""
        job = asyncio.ensure_future(self._give(cid, rnd))
        job.add_done_callback(lambda j: j.cancelled() or j.exception())  # heard, if nobody waits
        await asyncio.shield(job)

    async def _give(self, cid: str, rnd: int) -> None:
        data = await self.work.call(self.transfers.take, cid, rnd)
        if data is None:
            return
        try:
            await self.work.update(self.engine.submit, cid, rnd, data)
        except Refused as e:
            if e.code != Status.INVALID_ARGUMENT:
                await self.work.call(self.transfers.release, cid, rnd)
            raise

    async def UploadStatus(self, request: pb.UploadStatusRequest, context) -> pb.UploadStatusReply:
        await self._bound(context, request.session_id)
        try:
            cid = self.sessions.check_session(request.session_id)
        except Refused as e:
            await self._abort(context, e, "upload status")
        try:  # all bytes held, stream broken before its close
            await self._hand_over(cid, request.round)
        except Refused as e:  # the upload's blob refused
            await self._abort(context, e, "upload status", upload=True)
        return await self.work.call(self.transfers.status, cid, request.round)

    async def Report(self, request: pb.ReportRequest, context) -> pb.ReportReply:
        await self._bound(context, request.session_id)
        try:
            await self.work.call(self.engine.report, request.session_id, request.round,
                                 dict(request.metrics),
                                 request.profile if request.HasField("profile") else None,
                                 request.decline_reason)
        except Refused as e:
            await self._abort(context, e, "report")
        return pb.ReportReply()

    async def ProbeUpload(self, request_iterator, context) -> pb.ProbeReply:
        session, cid = await self._stream_session(context, "probe")
        try:
            with self.calls.hold(cid, "probe"):
                return await self._probe_upload(request_iterator, context, session, cid)
        except Refused as e:
            await self._abort(context, e, f"probe from {cid!r}")

    async def _probe_upload(self, messages, context, session: str, cid: str) -> pb.ProbeReply:
        received, t0, t1 = 0, None, None
        first = True
        while (msg := await self._read(messages, context, "probe", cid)) is not None:
            if first:
                _same_session(msg, session)
            first = False
            now = time.perf_counter()
            t0 = now if t0 is None else t0
            t1 = now
            received += len(msg.data)
            if received > PROBE_MAX_BYTES:
                await context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED,
                                    f"probe larger than {PROBE_MAX_BYTES} bytes")
        return pb.ProbeReply(received=received, seconds=(t1 - t0) if t0 is not None else 0.0)

    async def ProbeDownload(self, request: pb.ProbeRequest, context) -> None:
        await self._bound(context, request.session_id)
        try:
            cid = self.sessions.check_session(request.session_id)
            with self.calls.hold(cid, "probe"):
                if request.size > PROBE_MAX_BYTES:
                    await context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED,
                                        f"probe larger than {PROBE_MAX_BYTES} bytes")
                chunk = self.engine.spec.chunk_bytes
                sent = 0
                while sent < request.size:
                    n = min(chunk, request.size - sent)
                    await self._write(context, pb.Chunk(offset=sent, data=_PROBE_BLOCK[:n],
                                                        total_size=request.size), "probe", cid)
                    sent += n
        except Refused as e:
            await self._abort(context, e, "probe")


def _next_chunk(pieces, blob: Blob) -> pb.Chunk | None:
    """The download's next message (reading a spooled blob's pages and hashing them: on a
    worker), or None at the end."""
    got = next(pieces, None)
    if got is None:
        return None
    off, data = got
    return pb.Chunk(offset=off, data=data, digest=sha256(data), total_size=blob.size,
                    blob_digest=blob.digest)


def _same_session(msg, session: str) -> None:
    """A stream's first message names the session its call metadata was admitted with."""
    if msg.session_id != session:
        raise Refused(Status.UNAUTHENTICATED,
                      f"the first chunk's session_id is not the call's session ({SESSION_METADATA})")
