"""gRPC handlers: translate messages to calls on the engine, the sessions and the transfers,
map refusals to statuses, and count the serialized size of every message where the stream is
handled.

An upload is admitted by the engine once, on its first message; its chunks go to the transfers
only, and the engine gets the one verified blob they put together, as soon as its last byte is
acknowledged (or, if that call broke first, on the next UploadStatus). Every call, chunk and
heartbeat marks its client as heard (:mod:`.sessions`).

Nothing waits on an unauthenticated peer: a streaming call (Upload, ProbeUpload) carries its
session in the call metadata (:data:`SESSION_METADATA`), checked before the handler reads, and
so waits, for the first message; without a known session it is refused UNAUTHENTICATED at once.
The calls that hold a thread are bounded per client and idle streams cancelled (:mod:`.calls`).
An upload refused is counted by the status sent (:mod:`.metrics`): the run log records the
accepted updates and the final refusals, not every refused call."""

from __future__ import annotations

import logging
import os
import time
from contextlib import ExitStack

import grpc

from fedlora.common.wire.chunks import iter_chunks, sha256
from fedlora.common.wire.protocol import MAX_CHUNK_BYTES, PROBE_MAX_BYTES, PROTOCOL, SESSION_METADATA
from fedlora.common.tls import peer_common_name
from fedlora.proto.v1 import fedlora_pb2 as pb
from fedlora.proto.v1 import fedlora_pb2_grpc as pbg
from fedlora.server.calls import Calls
from fedlora.server.engine import Engine
from fedlora.server.metrics import Metrics
from fedlora.common.errors import Refused, Status

log = logging.getLogger("fedlora.server")

_PROBE_BLOCK = os.urandom(MAX_CHUNK_BYTES)  # incompressible, reused: probes measure the link, not a codec


class CoordinatorService(pbg.CoordinatorServicer):
    def __init__(self, engine: Engine, calls: Calls, metrics: Metrics):
        self.engine = engine
        self.sessions = engine.sessions
        self.transfers = engine.transfers
        self.calls = calls
        self.metrics = metrics

    def _abort(self, context: grpc.ServicerContext, e: Refused, what: str, upload: bool = False):
        """Ends the call with the refusal's status; ``upload``: an upload refused (counted)."""
        log.warning("%s refused: %s: %s", what, e.code.name, e.message)
        if upload:
            self.metrics.upload_refused(e.code)
        context.abort(grpc.StatusCode[e.code.name], e.message)

    def _bound(self, context, session: str, upload: bool = False) -> None:
        """Under mutual TLS a session is usable only with the certificate of the client that
        owns it: a client cannot act as another id, even holding its session id."""
        cn = peer_common_name(context)
        if cn is None:
            return
        try:
            cid = self.sessions.check_session(session)
        except Refused as e:
            self._abort(context, e, "call", upload)
        if cid != cn:
            self._abort(context, Refused(Status.PERMISSION_DENIED,
                                         f"certificate is for {cn!r}, the session belongs to another client"),
                        f"call from {cn!r}", upload)

    def _stream_session(self, context, what: str, upload: bool = False) -> tuple[str, str]:
        """(session, client id) from a streaming call's metadata, checked before the stream is
        read: no session, or one nobody holds, is UNAUTHENTICATED at once."""
        session = next((v for k, v in (context.invocation_metadata() or ())
                        if k == SESSION_METADATA), "")
        if not isinstance(session, str) or not session:
            self._abort(context, Refused(Status.UNAUTHENTICATED,
                                         f"no session in the call metadata ({SESSION_METADATA}): "
                                         "join first"), what, upload)
        self._bound(context, session, upload)
        try:
            return session, self.sessions.check_session(session)
        except Refused as e:
            self._abort(context, e, what, upload)

    def Join(self, request: pb.JoinRequest, context) -> pb.JoinReply:
        if request.protocol and request.protocol != PROTOCOL:
            context.abort(grpc.StatusCode.FAILED_PRECONDITION,
                          f"protocol {request.protocol!r} not supported; this coordinator speaks {PROTOCOL}")
        cn = peer_common_name(context)
        if cn is not None and cn != request.client_id:
            self._abort(context, Refused(Status.PERMISSION_DENIED,
                                         f"certificate is for {cn!r}, not for client {request.client_id!r}"),
                        f"join of {request.client_id!r}")
        try:
            return self.sessions.join(request.client_id, request.token, request.profile,
                                      request.instance)
        except Refused as e:
            self._abort(context, e, f"join of {request.client_id!r}")

    def GetTask(self, request: pb.TaskRequest, context) -> pb.Task:
        self._bound(context, request.session_id)
        try:
            cid = self.sessions.check_session(request.session_id)
            with self.calls.hold(cid, "task"):  # a long-poll holds its thread
                return self.engine.task(request.session_id, request.last_round,
                                        request.wait_seconds, context.is_active)
        except Refused as e:
            self._abort(context, e, "task")

    def Heartbeat(self, request: pb.HeartbeatRequest, context) -> pb.HeartbeatReply:
        self._bound(context, request.session_id)
        try:
            self.sessions.check_session(request.session_id)  # marks the client as heard
        except Refused as e:
            self._abort(context, e, "heartbeat")
        return pb.HeartbeatReply()

    def Download(self, request: pb.DownloadRequest, context):
        self._bound(context, request.session_id)
        with ExitStack() as held:
            try:
                cid, blob = self.engine.download_blob(request.session_id, request.round)
                st = held.enter_context(self.calls.stream(cid, "download", context.cancel))
            except Refused as e:
                self._abort(context, e, "download")
                return
            yield from self._download(request, context, cid, blob, st)

    def _download(self, request: pb.DownloadRequest, context, cid: str, blob, st):
        if request.offset > blob.size:
            context.abort(grpc.StatusCode.OUT_OF_RANGE,
                          f"offset {request.offset} beyond the blob's {blob.size} bytes")
        chunk = self.engine.spec.chunk_bytes
        sent = grpc_bytes = 0
        t0 = time.perf_counter()
        try:
            grpc_bytes += request.ByteSize()
            for off, data in iter_chunks(blob.data, chunk, start=request.offset):
                msg = pb.Chunk(offset=off, data=data, digest=sha256(data), total_size=blob.size,
                               blob_digest=blob.digest)
                grpc_bytes += msg.ByteSize()
                sent += len(data)
                self.sessions.heard(cid)
                yield msg
                self.calls.moved(st)  # the peer took it
        finally:
            self.transfers.sent(cid, request.round, blob, sent, grpc_bytes,
                                time.perf_counter() - t0)

    def Upload(self, request_iterator, context) -> pb.UploadReply:
        t0 = time.perf_counter()  # the call starts before its first chunk has arrived
        session, cid = self._stream_session(context, "upload", upload=True)
        try:
            with self.calls.stream(cid, "upload", context.cancel) as st:
                return self._upload(self.calls.watch(st, request_iterator), context, session, t0)
        except Refused as e:
            self._abort(context, e, f"upload from {cid!r}", upload=True)

    def _upload(self, request_iterator, context, session: str, t0: float) -> pb.UploadReply:
        try:
            first = next(request_iterator, None)
        except grpc.RpcError:  # the client hung up, or the stream sat idle and was cancelled
            return pb.UploadReply()
        if first is None:
            raise Refused(Status.INVALID_ARGUMENT, "empty upload stream")
        _same_session(first, session)
        rnd = first.round
        try:
            cid = self.engine.admit_upload(first.session_id, rnd, first.total_size,
                                           first.blob_digest)
            part = self.transfers.upload(cid, rnd, first.total_size, first.blob_digest)
        except Refused as e:
            self._abort(context, e, "upload", upload=True)
            return pb.UploadReply()
        received = 0
        grpc_bytes = 0
        try:
            msg = first
            while msg is not None:
                grpc_bytes += msg.ByteSize()
                received += len(msg.data)
                self.sessions.heard(cid)
                if msg.data or msg.offset:
                    self.transfers.add(part, msg.offset, msg.data, msg.digest)
                    if part.complete:  # now, not at the close: the stream may break first
                        self._hand_over(cid, rnd)
                try:
                    msg = next(request_iterator, None)
                except grpc.RpcError:  # the client hung up: nobody to reply to
                    return pb.UploadReply()
            status = self.transfers.status(cid, rnd)
            reply = pb.UploadReply(received=part.acked, complete=status.complete,
                                   message="accepted" if status.complete else
                                   f"{part.acked} of {part.total_size} bytes held")
            grpc_bytes += reply.ByteSize()
            return reply
        except Refused as e:
            self._abort(context, e, f"upload from {cid!r}", upload=True)
        finally:
            self.transfers.received(cid, rnd, received, grpc_bytes, time.perf_counter() - t0)

    def _hand_over(self, cid: str, rnd: int) -> None:
        """Gives the client's whole blob to the engine, if no other call has (a second stream
        of the same client, or UploadStatus after a stream broke past its last byte). Only a
        final refusal keeps it from being handed over again."""
        data = self.transfers.take(cid, rnd)
        if data is None:
            return
        try:
            self.engine.submit(cid, rnd, data)
        except Refused as e:
            if e.code != Status.INVALID_ARGUMENT:
                self.transfers.release(cid, rnd)
            raise

    def UploadStatus(self, request: pb.UploadStatusRequest, context) -> pb.UploadStatusReply:
        self._bound(context, request.session_id)
        try:
            cid = self.sessions.check_session(request.session_id)
        except Refused as e:
            self._abort(context, e, "upload status")
        try:
            self._hand_over(cid, request.round)  # all bytes held, stream broken before its close
        except Refused as e:  # the upload's blob refused
            self._abort(context, e, "upload status", upload=True)
        return self.transfers.status(cid, request.round)

    def Report(self, request: pb.ReportRequest, context) -> pb.ReportReply:
        self._bound(context, request.session_id)
        try:
            self.engine.report(request.session_id, request.round, dict(request.metrics),
                               request.profile if request.HasField("profile") else None,
                               request.decline_reason)
        except Refused as e:
            self._abort(context, e, "report")
        return pb.ReportReply()

    def ProbeUpload(self, request_iterator, context) -> pb.ProbeReply:
        session, cid = self._stream_session(context, "probe")
        try:
            with self.calls.stream(cid, "probe", context.cancel) as st:
                return self._probe_upload(self.calls.watch(st, request_iterator), context, session)
        except Refused as e:
            self._abort(context, e, f"probe from {cid!r}")

    def _probe_upload(self, request_iterator, context, session: str) -> pb.ProbeReply:
        received, t0, t1 = 0, None, None
        first = True
        for msg in request_iterator:
            if first:
                _same_session(msg, session)
            first = False
            now = time.perf_counter()
            t0 = now if t0 is None else t0
            t1 = now
            received += len(msg.data)
            if received > PROBE_MAX_BYTES:
                context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED,
                              f"probe larger than {PROBE_MAX_BYTES} bytes")
        return pb.ProbeReply(received=received, seconds=(t1 - t0) if t0 is not None else 0.0)

    def ProbeDownload(self, request: pb.ProbeRequest, context):
        self._bound(context, request.session_id)
        with ExitStack() as held:
            try:
                cid = self.sessions.check_session(request.session_id)
                st = held.enter_context(self.calls.stream(cid, "probe", context.cancel))
            except Refused as e:
                self._abort(context, e, "probe")
            if request.size > PROBE_MAX_BYTES:
                context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED,
                              f"probe larger than {PROBE_MAX_BYTES} bytes")
            chunk = self.engine.spec.chunk_bytes
            sent = 0
            while sent < request.size:
                n = min(chunk, request.size - sent)
                yield pb.Chunk(offset=sent, data=_PROBE_BLOCK[:n], total_size=request.size)
                self.calls.moved(st)
                sent += n


def _same_session(msg, session: str) -> None:
    """A stream's first message names the session its call metadata was admitted with."""
    if msg.session_id != session:
        raise Refused(Status.UNAUTHENTICATED,
                      f"the first chunk's session_id is not the call's session ({SESSION_METADATA})")
