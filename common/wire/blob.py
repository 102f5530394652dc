"""The unit of transfer: a safetensors file, digested, cut into chunks.

Header metadata names the round, the sender and the codec chain, so a blob explains itself
without the RPC that carried it. Everything that goes over the wire in either direction is
built by :func:`pack` and read by :func:`unpack`; there is no other serialisation path.

All of fedlora's header lives in one metadata entry, ``fedlora``, a JSON object with sorted
keys: safetensors writes its metadata map in hash order, so several entries would make the
same tensors give different bytes (and digests) from one call to the next.
"""

from __future__ import annotations

import json
import struct
from dataclasses import dataclass, field
from typing import Any

import torch
import zstandard
from safetensors.torch import load as st_load
from safetensors.torch import save as st_save

from fedlora.common.wire.chunks import sha256
from fedlora.common.wire.codec import Chain
from fedlora.common.wire.stats import tensor_bytes

HEADER_KEY = "fedlora"
CODEC_TENSOR = "__codec__"


class BlobError(ValueError):
    """A blob that cannot be used: corrupt, undecodable, or not what was expected."""


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


def pack(tensors: dict[str, torch.Tensor], header: dict[str, Any], chain: Chain) -> Blob:
    """A deterministic blob: the same tensors, header and chain always give the same bytes.

    The chain's per-tensor description (names, dtypes, shapes, part keys) is stored zstd-packed
    in a uint8 tensor ``__codec__`` rather than in the JSON header, where it would cost more
    than the data for adapters of many small tensors.
    """
    wire, codec_meta, stage_bytes = chain.encode(
        {k: v.detach().contiguous().cpu() for k, v in tensors.items()}
    )
    packed = zstandard.ZstdCompressor(level=19).compress(codec_meta.encode())
    wire[CODEC_TENSOR] = torch.frombuffer(bytearray(packed), dtype=torch.uint8)
    full = {**header, "codec_chain": chain.specs(), "stage_bytes": stage_bytes}
    meta = {HEADER_KEY: json.dumps(full, sort_keys=True, separators=(",", ":"))}
    data = st_save({k: v.contiguous() for k, v in wire.items()}, metadata=meta)
    return Blob(data, sha256(data), tensor_bytes(tensors), stage_bytes, tuple(chain.specs()))


def read_header(data: bytes) -> dict[str, Any]:
    """fedlora's header of a blob, without decoding any tensor."""
    if len(data) < 8:
        raise BlobError(f"blob of {len(data)} bytes is too short for a safetensors header")
    (n,) = struct.unpack("<Q", data[:8])
    if n > len(data) - 8:
        raise BlobError("safetensors header length exceeds the blob")
    try:
        st_header = json.loads(data[8 : 8 + n])
        raw = (st_header.get("__metadata__") or {}).get(HEADER_KEY)
        header = json.loads(raw) if raw else {}
    except (ValueError, AttributeError) as e:
        raise BlobError(f"blob header is not valid JSON: {e}") from None
    if not isinstance(header, dict):
        raise BlobError("blob header is not a JSON object")
    return header


def unpack(data: bytes) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Decodes a blob to its tensors (original names) and its header."""
    header = read_header(data)
    try:
        wire = st_load(data)
    except Exception as e:  # safetensors raises its own error types
        raise BlobError(f"not a valid safetensors blob: {e}") from None
    codec = wire.pop(CODEC_TENSOR, None)
    if codec is None:
        raise BlobError(f"blob has no {CODEC_TENSOR} description")
    try:
        meta = zstandard.ZstdDecompressor().decompress(codec.numpy().tobytes(), max_output_size=64 << 20)
        return Chain.decode(wire, meta.decode()), header
    except (KeyError, ValueError, RuntimeError, TypeError, IndexError, zstandard.ZstdError) as e:
        raise BlobError(f"cannot decode codec chain: {e}") from None

