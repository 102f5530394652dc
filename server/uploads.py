"""Reassembly of chunked uploads, resumable from the last acknowledged offset.

A chunk is taken only if it starts exactly at the acknowledged offset and its digest matches;
anything else is refused and leaves what was acknowledged intact, so the client resumes
(NVFlare-style: a transfer fails on no progress, not on a clock).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import grpc

from fedlora.common.blob import sha256
from fedlora.server.errors import Refused


@dataclass
class PartialUpload:
    total_size: int
    blob_digest: str
    buffer: bytearray = field(default_factory=bytearray)
    grpc_bytes: int = 0
    seconds: float = 0.0

    @property
    def acked(self) -> int:
        return len(self.buffer)

    @property
    def complete(self) -> bool:
        return self.acked == self.total_size

    def add(self, offset: int, data: bytes, digest: str) -> None:
        if offset != self.acked:
            kind = "overlaps" if offset < self.acked else "skips ahead of"
            raise Refused(
                grpc.StatusCode.OUT_OF_RANGE,
                f"chunk at offset {offset} {kind} the acknowledged offset {self.acked}",
            )
        if not data:
            raise Refused(grpc.StatusCode.INVALID_ARGUMENT, f"empty chunk at offset {offset}")
        if offset + len(data) > self.total_size:
            raise Refused(
                grpc.StatusCode.OUT_OF_RANGE,
                f"chunk at offset {offset} of {len(data)} bytes runs past the declared size "
                f"{self.total_size}",
            )
        if sha256(data) != digest:
            raise Refused(grpc.StatusCode.DATA_LOSS,
                          f"chunk digest mismatch at offset {offset} ({len(data)} bytes)")
        self.buffer.extend(data)

    def verified(self) -> bytes:
        data = bytes(self.buffer)
        if sha256(data) != self.blob_digest:
            raise Refused(grpc.StatusCode.DATA_LOSS,
                          f"blob digest mismatch over {len(data)} bytes: the upload is discarded")
        return data
