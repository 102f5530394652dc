"""safetensors written a tensor at a time, hashed on the way.

``safetensors.torch.save`` turns every tensor into a Python ``bytes`` copy and then builds the
whole file in one more buffer: two model-sized allocations beside the tensors themselves. For a
coordinator serving or journaling a full model that was most of its peak memory. Here the header
is laid out first (it only needs dtypes and shapes), then each tensor's own memory goes straight
to the file, so the extra memory is one header.

The bytes are exactly what ``safetensors.torch.save`` gives for the same tensors and metadata
(a unit test holds the two together): data ordered by dtype (wider first, in safetensors' own
dtype order) then by name, a compact JSON header padded with spaces to 8 bytes. A blob written
here and one packed in memory therefore have the same digest.
"""

from __future__ import annotations

import hashlib
import json
import struct
from collections.abc import Mapping
from typing import BinaryIO

import torch

# safetensors' Dtype enum, in its declaration order: data is laid out from the last to the first
_ORDER = ("BOOL", "U8", "I8", "I16", "F16", "BF16", "I32", "F32", "F64", "I64")
_NAMES = {torch.bool: "BOOL", torch.uint8: "U8", torch.int8: "I8", torch.int16: "I16",
          torch.float16: "F16", torch.bfloat16: "BF16", torch.int32: "I32",
          torch.float32: "F32", torch.float64: "F64", torch.int64: "I64"}


def layout(tensors: Mapping[str, torch.Tensor],
           metadata: Mapping[str, str] | None = None) -> tuple[bytes, list[str]]:
    """The file's first bytes (length prefix and header) and the order the data follows in."""
    for name, t in tensors.items():
        if t.dtype not in _NAMES:
            raise ValueError(f"tensor {name!r}: dtype {t.dtype} cannot be written as safetensors here")
    order = sorted(tensors, key=lambda k: (-_ORDER.index(_NAMES[tensors[k].dtype]), k))
    entries: dict[str, object] = {}
    if metadata is not None:
        entries["__metadata__"] = dict(metadata)
    offset = 0
    for name in order:
        t = tensors[name]
        size = t.numel() * t.element_size()
        entries[name] = {"dtype": _NAMES[t.dtype], "shape": list(t.shape),
                         "data_offsets": [offset, offset + size]}
        offset += size
    header = json.dumps(entries, separators=(",", ":"), ensure_ascii=False).encode()
    header += b" " * (-len(header) % 8)
    return struct.pack("<Q", len(header)) + header, order


def write(tensors: Mapping[str, torch.Tensor], metadata: Mapping[str, str] | None,
          out: BinaryIO) -> tuple[int, str]:
    """Writes the safetensors file to ``out``; returns its size and sha256 (hex)."""
    head, order = layout(tensors, metadata)
    digest = hashlib.sha256(head)
    out.write(head)
    size = len(head)
    for name in order:
        data = _raw(tensors[name])
        out.write(data)
        digest.update(data)
        size += len(data)
    return size, digest.hexdigest()


def _raw(t: torch.Tensor) -> memoryview:
    """The tensor's bytes in place (little-endian, as safetensors stores them); a copy only
    where the tensor is not already a contiguous CPU tensor."""
    flat = t.detach().cpu().contiguous().reshape(-1)
    return memoryview(flat.view(torch.uint8).numpy()).cast("B")
