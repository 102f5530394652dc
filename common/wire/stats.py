"""What one transfer cost, at every level fedlora measures; the same record on both ends."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch

from fedlora.common.netstat import Counters


def tensor_bytes(tensors: dict[str, torch.Tensor]) -> int:
    """numel x element size before any codec: the ``tensor_bytes`` level."""
    return sum(t.numel() * t.element_size() for t in tensors.values())


@dataclass
class TransferStats:
    """``tensor_bytes``: raw tensors; ``payload_bytes``: chunk data that crossed, resends
    included; ``protobuf_bytes``: serialized protobuf size of every message of the calls (not
    gRPC's 5-byte message prefix, nor HTTP/2, TLS or TCP/IP framing: the interface level counts
    those); ``seconds``: time inside the calls; ``iface``: interface counter deltas, where measurable."""

    tensor_bytes: int = 0
    payload_bytes: int = 0
    protobuf_bytes: int = 0
    seconds: float = 0.0
    stage_bytes: list[int] = field(default_factory=list)
    iface: Counters | None = None

    def add(self, payload_bytes: int, protobuf_bytes: int, seconds: float) -> None:
        self.payload_bytes += payload_bytes
        self.protobuf_bytes += protobuf_bytes
        self.seconds += seconds

    def as_dict(self) -> dict[str, Any]:
        d = {"tensor_bytes": self.tensor_bytes, "payload_bytes": self.payload_bytes,
             "protobuf_bytes": self.protobuf_bytes, "seconds": round(self.seconds, 4),
             "stage_bytes": self.stage_bytes}
        d["throughput_bytes_per_s"] = (round(self.payload_bytes / self.seconds, 1)
                                       if self.seconds > 0 else None)
        return d
