"""The current round's transfers: partial uploads, what each client may resume from, and what
every download and upload cost.

The service feeds chunks in here and takes out one verified blob per client; only that blob
reaches the engine, so per-chunk work never waits on the round loop. The blob is taken as soon
as its last byte is acknowledged, not when the stream closes (a stream may break after its last
byte), and exactly once (:meth:`Transfers.take`), whichever call gets there first. The engine starts each
round (attempt) with :meth:`Transfers.open`, which forgets everything: a retried round starts
clean. Calls naming another round are ignored, so a stream outliving its round cannot touch
the next one's books.

Memory: an upload lives in RAM up to ``spool_bytes`` and in a file under ``spool_dir`` above
it; its bytes are let go (:meth:`PartialUpload.release`) when the engine folds or finally
refuses it and when the next round opens, so what the coordinator holds is O(adapter) per
upload in flight, never O(clients x update) until the round ends.

Locking: one plain lock of its own, never held while calling out. The engine calls
:meth:`open`, :meth:`accepted` and :meth:`drop` while holding its condition, so the order is
always engine condition, then this lock.
"""

from __future__ import annotations

import dataclasses
import itertools
import logging
import threading
from pathlib import Path

from fedlora.common.errors import Refused, Status
from fedlora.common.wire.blob import Blob
from fedlora.common.wire.chunks import PartialUpload
from fedlora.common.wire.stats import TransferStats
from fedlora.proto.v1 import fedlora_pb2 as pb

log = logging.getLogger("fedlora.server")


SPOOL_SUFFIX = ".part"


class Transfers:
    def __init__(self, spool_dir: Path | None = None, spool_bytes: int = 16 << 20) -> None:
        """``spool_dir``: where uploads larger than ``spool_bytes`` are put together (emptied
        here of any leftover of an earlier process); None keeps every upload in RAM."""
        self.spool_dir = spool_dir
        self.spool_bytes = spool_bytes
        self._names = itertools.count()
        if spool_dir is not None:
            spool_dir.mkdir(parents=True, exist_ok=True)
            for stale in spool_dir.glob(f"*{SPOOL_SUFFIX}"):
                stale.unlink(missing_ok=True)
        self._lock = threading.Lock()
        self._round = 0
        self._uploads: dict[str, PartialUpload] = {}
        self._accepted: dict[str, int] = {}  # client -> size of its accepted blob
        self._taken: set[str] = set()        # clients whose whole blob is with the engine
        self._up: dict[str, TransferStats] = {}
        self._down: dict[str, TransferStats] = {}

    def open(self, rnd: int) -> None:
        with self._lock:
            for part in self._uploads.values():
                part.release()
            self._round = rnd
            self._uploads, self._accepted, self._up, self._down = {}, {}, {}, {}
            self._taken = set()

    # ------------------------------------------------------------------ uploads
    def upload(self, cid: str, rnd: int, total: int, digest: str) -> PartialUpload:
        """The client's partial upload to resume, or a fresh one when it declares another blob.
        The caller has admitted the declaration (:meth:`Engine.admit_upload`); a client whose
        update was accepted meanwhile (another stream of it delivered first) gets ALREADY_EXISTS:
        one update per client and round, whatever streams are open (the engine checks again
        before it folds, :meth:`Engine.submit`)."""
        with self._lock:
            if rnd == self._round and cid in self._accepted:
                raise Refused(Status.ALREADY_EXISTS, f"round {rnd}: update already accepted")
            part = self._uploads.get(cid) if rnd == self._round else None
            if part is None or part.total_size != total or part.blob_digest != digest:
                if rnd != self._round:
                    return PartialUpload(total, digest)  # never kept: its chunks go nowhere
                if part is not None:
                    part.release()
                part = PartialUpload(total, digest, self._spool_path(total))
                if part.spool is not None:
                    log.info("round %d: upload of %s (%d bytes) spooled to %s", rnd, cid, total,
                             part.spool)
                self._uploads[cid] = part
                self._taken.discard(cid)
            return part

    def _spool_path(self, total: int) -> Path | None:
        if self.spool_dir is None or total <= self.spool_bytes:
            return None
        return self.spool_dir / f"{next(self._names)}{SPOOL_SUFFIX}"

    def add(self, part: PartialUpload, offset: int, data: bytes, digest: str) -> None:
        """One chunk; refused chunks leave what was acknowledged intact (the client resumes)."""
        with self._lock:  # two streams of one client may share a partial upload
            part.add(offset, data, digest)

    def take(self, cid: str, rnd: int) -> memoryview | None:
        """The client's whole, verified blob, to hand to the engine: to the first caller after
        the last byte only; None while bytes are missing or once it was taken. On a digest
        mismatch the buffer is emptied (resend from zero) and the refusal raised."""
        with self._lock:
            part = self._uploads.get(cid) if rnd == self._round else None
            if part is None or not part.complete or cid in self._taken:
                return None
            data = part.verified()
            self._taken.add(cid)
            return data

    def release(self, cid: str, rnd: int) -> None:
        """The engine could not take the blob for a reason that is not final: a later call may
        hand it over again."""
        with self._lock:
            if rnd == self._round:
                self._taken.discard(cid)

    def accepted(self, cid: str, rnd: int, size: int, tensor_bytes: int,
                 stage_bytes: list[int]) -> None:
        """The engine folded the client's blob: its status is complete and the buffer let go."""
        with self._lock:
            if rnd != self._round:
                return
            part = self._uploads.pop(cid, None)
            if part is not None:
                part.release()
            self._taken.discard(cid)
            self._accepted[cid] = size
            t = self._up.setdefault(cid, TransferStats())
            t.tensor_bytes, t.stage_bytes = tensor_bytes, list(stage_bytes)

    def drop(self, cid: str, rnd: int) -> None:
        """A final refusal: nothing of the client's upload is kept."""
        with self._lock:
            if rnd == self._round:
                part = self._uploads.pop(cid, None)
                if part is not None:
                    part.release()
                self._taken.discard(cid)

    def status(self, cid: str, rnd: int) -> pb.UploadStatusReply:
        """Where the client resumes: the acknowledged offset, or complete once accepted."""
        with self._lock:
            if rnd != self._round:
                return pb.UploadStatusReply()
            if cid in self._accepted:
                size = self._accepted[cid]
                return pb.UploadStatusReply(acked_offset=size, total_size=size, complete=True)
            part = self._uploads.get(cid)
            if part is None:
                return pb.UploadStatusReply()
            return pb.UploadStatusReply(acked_offset=part.acked, total_size=part.total_size)

    # ------------------------------------------------------------------ byte counts
    def sent(self, cid: str, rnd: int, blob: Blob, payload_bytes: int, protobuf_bytes: int,
             seconds: float) -> None:
        """One download call's cost; resumed downloads add up."""
        with self._lock:
            if rnd != self._round:
                return
            t = self._down.setdefault(cid, TransferStats(tensor_bytes=blob.tensor_bytes,
                                                         stage_bytes=list(blob.stage_bytes)))
            t.add(payload_bytes, protobuf_bytes, seconds)

    def received(self, cid: str, rnd: int, payload_bytes: int, protobuf_bytes: int,
                 seconds: float) -> None:
        """One upload call's cost, resends included."""
        with self._lock:
            if rnd != self._round:
                return
            self._up.setdefault(cid, TransferStats()).add(payload_bytes, protobuf_bytes, seconds)

    def stats(self) -> tuple[dict[str, TransferStats], dict[str, TransferStats]]:
        """Copies of the round's ``(up, down)`` stats per client, for its records."""
        with self._lock:
            return ({c: dataclasses.replace(t) for c, t in self._up.items()},
                    {c: dataclasses.replace(t) for c, t in self._down.items()})
