"""The unit of transfer: a safetensors file, digested, cut into chunks.

Header metadata names the round, the sender and the codec chain, so a blob explains itself
without the RPC that carried it. Everything that goes over the wire in either direction is
built by :func:`pack` and read by :func:`unpack`; there is no other serialisation path.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from dataclasses import dataclass, field

import torch
from safetensors.torch import load as st_load
from safetensors.torch import save as st_save

from fedlora.common.codec import Chain

CODEC_KEY = "fedlora.codec"
DEFAULT_CHUNK_BYTES = 1 << 20


class BlobError(ValueError):
    """A blob that cannot be used: corrupt, undecodable, or not what was expected."""


def sha256(data: bytes | memoryview) -> str:
    return hashlib.sha256(data).hexdigest()


def tensor_bytes(tensors: dict[str, torch.Tensor]) -> int:
    return sum(t.numel() * t.element_size() for t in tensors.values())


@dataclass(frozen=True)
class Blob:
    data: bytes
    digest: str
    tensor_bytes: int                      # raw bytes of the tensors before any codec
    stage_bytes: list[int] = field(default_factory=list)  # tensor bytes after each stage
    codec: tuple[str, ...] = ()

    @property
    def size(self) -> int:
        return len(self.data)


def pack(tensors: dict[str, torch.Tensor], metadata: dict[str, str], chain: Chain) -> Blob:
    wire, codec_meta, stage_bytes = chain.encode(
        {k: v.detach().contiguous().cpu() for k, v in tensors.items()}
    )
    meta = {**{k: str(v) for k, v in metadata.items()}, CODEC_KEY: codec_meta,
            "fedlora.codec_chain": ",".join(chain.specs()),
            "fedlora.stage_bytes": ",".join(str(b) for b in stage_bytes)}
    data = st_save({k: v.contiguous() for k, v in wire.items()}, metadata=meta)
    return Blob(data, sha256(data), tensor_bytes(tensors), stage_bytes, tuple(chain.specs()))


def read_metadata(data: bytes) -> dict[str, str]:
    """The safetensors header metadata, without decoding any tensor."""
    import json
    import struct

    if len(data) < 8:
        raise BlobError(f"blob of {len(data)} bytes is too short for a safetensors header")
    (n,) = struct.unpack("<Q", data[:8])
    if n > len(data) - 8:
        raise BlobError("safetensors header length exceeds the blob")
    try:
        header = json.loads(data[8 : 8 + n])
    except ValueError as e:
        raise BlobError(f"safetensors header is not JSON: {e}") from None
    return dict(header.get("__metadata__") or {})


def unpack(data: bytes) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """Decodes a blob to tensors and its metadata (codec keys removed)."""
    meta = read_metadata(data)
    try:
        wire = st_load(data)
    except Exception as e:  # safetensors raises its own error types
        raise BlobError(f"not a valid safetensors blob: {e}") from None
    codec_meta = meta.pop(CODEC_KEY, None)
    meta.pop("fedlora.codec_chain", None)
    if codec_meta is None:
        return wire, meta
    try:
        return Chain.decode(wire, codec_meta), meta
    except (KeyError, ValueError, RuntimeError) as e:
        raise BlobError(f"cannot decode codec chain: {e}") from None


def iter_chunks(data: bytes, chunk_bytes: int, start: int = 0) -> Iterator[tuple[int, bytes]]:
    if chunk_bytes <= 0:
        raise ValueError("chunk_bytes must be positive")
    view = memoryview(data)
    for off in range(start, len(data), chunk_bytes):
        yield off, bytes(view[off : off + chunk_bytes])
