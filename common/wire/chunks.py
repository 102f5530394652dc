"""Cutting a blob into chunks and putting an upload back together, resumably.

A chunk is taken only if it starts exactly at the acknowledged offset and its digest matches;
anything else is refused and leaves what was acknowledged intact, so the sender resumes
(NVFlare-style: a transfer fails on no progress, not on a clock). The receiver ends with one
whole blob whose sha256 is the one declared up front, or with nothing.
"""

from __future__ import annotations

import hashlib
import mmap
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO

from fedlora.common.errors import Refused, Status


def sha256(data: bytes | memoryview) -> str:
    return hashlib.sha256(data).hexdigest()


def iter_chunks(data: bytes | memoryview, chunk_bytes: int, start: int = 0) -> Iterator[tuple[int, bytes]]:
    """``(offset, bytes)`` pieces of ``data`` from ``start`` on, ``chunk_bytes`` each."""
    if chunk_bytes <= 0:
        raise ValueError("chunk_bytes must be positive")
    view = memoryview(data)
    for off in range(start, len(data), chunk_bytes):
        piece = bytes(view[off : off + chunk_bytes])
        drop_pages(view, off, off + len(piece))
        yield off, piece


def drop_pages(view: memoryview, begin: int, end: int) -> None:
    """Where ``view`` is a whole mapped file (a spooled blob), gives the pages of
    ``[begin, end)`` back once they were copied out: they stay in the kernel's page cache but
    leave this process's resident set, so serving or folding a full model from a spool file
    does not grow it by the model. A no-op for memory that is not a mapped file."""
    target = view.obj
    if not isinstance(target, mmap.mmap) or len(view) != len(target) or end <= begin:
        return
    first = begin - begin % mmap.PAGESIZE  # madvise wants a page-aligned start
    try:
        target.madvise(mmap.MADV_DONTNEED, first, end - first)
    except (OSError, ValueError):  # a closed map, or a platform without it: only memory is at stake
        pass


class PartialUpload:
    """One upload being put together: in RAM, or (``spool``, for large ones) in a file, so the
    coordinator's memory does not grow with clients x update size. The sha256 of the whole
    blob is computed as chunks arrive, so verifying it needs no second copy."""

    def __init__(self, total_size: int, blob_digest: str, spool: Path | None = None):
        self.total_size = total_size
        self.blob_digest = blob_digest
        self.spool = spool
        self._hash = hashlib.sha256()
        self._acked = 0
        self._buffer = bytearray()
        self._file: BinaryIO | None = open(spool, "w+b") if spool is not None else None
        self.released = False

    @property
    def acked(self) -> int:
        return self._acked

    @property
    def held(self) -> int:
        """Bytes of the upload held in memory (none once spooled or released)."""
        return len(self._buffer)

    @property
    def complete(self) -> bool:
        return self._acked == self.total_size

    def add(self, offset: int, data: bytes, digest: str) -> None:
        if self.released:
            raise Refused(Status.FAILED_PRECONDITION,
                          "this upload is over (folded, refused, replaced by another blob, or its "
                          "round ended): ask UploadStatus")
        if offset != self.acked:
            kind = "overlaps" if offset < self.acked else "skips ahead of"
            raise Refused(Status.OUT_OF_RANGE,
                          f"chunk at offset {offset} {kind} the acknowledged offset {self.acked}")
        if not data:
            raise Refused(Status.INVALID_ARGUMENT, f"empty chunk at offset {offset}")
        if offset + len(data) > self.total_size:
            raise Refused(Status.OUT_OF_RANGE,
                          f"chunk at offset {offset} of {len(data)} bytes runs past the declared size "
                          f"{self.total_size}")
        if sha256(data) != digest:
            raise Refused(Status.DATA_LOSS,
                          f"chunk digest mismatch at offset {offset} ({len(data)} bytes)")
        if self._file is not None:
            self._file.write(data)
            self._file.flush()  # in the file, not in a buffer the size of the upload
        else:
            self._buffer.extend(data)
        self._hash.update(data)
        self._acked += len(data)

    def verified(self) -> memoryview:
        """The whole blob, without copying it (a view of the buffer, or of the spool file
        mapped read-only); a digest mismatch empties it (the sender starts over)."""
        if self._hash.hexdigest() != self.blob_digest:
            size = self._acked
            self._restart()
            raise Refused(Status.DATA_LOSS,
                          f"blob digest mismatch over {size} bytes: the upload is discarded")
        if self._file is None:
            return memoryview(self._buffer)
        if not self.total_size:
            return memoryview(b"")
        return memoryview(mmap.mmap(self._file.fileno(), 0, access=mmap.ACCESS_READ))

    def _restart(self) -> None:
        self._hash = hashlib.sha256()
        self._acked = 0
        self._buffer = bytearray()  # rebound, not cleared: a view handed out may still be alive
        if self._file is not None:
            self._file.seek(0)
            self._file.truncate()

    def release(self) -> None:
        """Lets the bytes go (the update was folded or finally refused, or the round ended):
        the buffer is dropped and the spool file removed, whoever still holds this object (a
        stream that stays open). Views handed out keep their memory until they are dropped."""
        self.released = True
        self._buffer = bytearray()
        if self._file is not None:
            self._file.close()
            self._file = None
            if self.spool is not None:
                self.spool.unlink(missing_ok=True)
