"""Cutting a blob into chunks and putting an upload back together, resumably.

A chunk is taken only if it starts exactly at the acknowledged offset and its digest matches;
anything else is refused and leaves what was acknowledged intact, so the sender resumes
(NVFlare-style: a transfer fails on no progress, not on a clock). The receiver ends with one
whole blob whose sha256 is the one declared up front, or with nothing.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from dataclasses import dataclass, field

from fedlora.common.errors import Refused, Status


def sha256(data: bytes | memoryview) -> str:
    return hashlib.sha256(data).hexdigest()


def iter_chunks(data: bytes, chunk_bytes: int, start: int = 0) -> Iterator[tuple[int, bytes]]:
    """``(offset, bytes)`` pieces of ``data`` from ``start`` on, ``chunk_bytes`` each."""
    if chunk_bytes <= 0:
        raise ValueError("chunk_bytes must be positive")
    view = memoryview(data)
    for off in range(start, len(data), chunk_bytes):
        yield off, bytes(view[off : off + chunk_bytes])


@dataclass
class PartialUpload:
    total_size: int
    blob_digest: str
    buffer: bytearray = field(default_factory=bytearray)

    @property
    def acked(self) -> int:
        return len(self.buffer)

    @property
    def complete(self) -> bool:
        return self.acked == self.total_size

    def add(self, offset: int, data: bytes, digest: str) -> None:
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
        self.buffer.extend(data)

    def verified(self) -> bytes:
        """The whole blob; a digest mismatch empties the buffer (the sender starts over)."""
        data = bytes(self.buffer)
        if sha256(data) != self.blob_digest:
            self.buffer.clear()
            raise Refused(Status.DATA_LOSS,
                          f"blob digest mismatch over {len(data)} bytes: the upload is discarded")
        return data
