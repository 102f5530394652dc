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
import logging
import mmap
import struct
import tempfile
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import zstandard
from safetensors.torch import load as st_load
from safetensors.torch import save as st_save

from fedlora.common.wire.chunks import drop_pages, sha256
from fedlora.common.wire.codec import Chain, CodecError, Expectation, check_wire, decode_one, inflate
from fedlora.common.wire.stats import tensor_bytes
from fedlora.common.wire.stwrite import write as st_write

log = logging.getLogger("fedlora.wire")

HEADER_KEY = "fedlora"
CODEC_TENSOR = "__codec__"
_ST_DTYPES = {"F64": torch.float64, "F32": torch.float32, "F16": torch.float16,
              "BF16": torch.bfloat16, "I64": torch.int64, "I32": torch.int32, "I16": torch.int16,
              "I8": torch.int8, "U8": torch.uint8, "BOOL": torch.bool}


class BlobError(ValueError):
    """A blob that cannot be used: corrupt, undecodable, or not what was expected."""


@dataclass(frozen=True)
class Blob:
    data: bytes | memoryview  # in memory, or a read-only map of an unlinked file (pack(spool=))
    digest: str
    tensor_bytes: int                      # raw bytes of the tensors before any codec
    stage_bytes: list[int] = field(default_factory=list)  # tensor bytes after each stage
    codec: tuple[str, ...] = ()

    @property
    def size(self) -> int:
        return len(self.data)


def pack(tensors: dict[str, torch.Tensor], header: dict[str, Any], chain: Chain,
         spool: Path | None = None) -> Blob:
    """A deterministic blob: the same tensors, header and chain always give the same bytes.

    The chain's per-tensor description (names, dtypes, shapes, part keys) is stored zstd-packed
    in a uint8 tensor ``__codec__`` rather than in the JSON header, where it would cost more
    than the data for adapters of many small tensors.

    ``spool``: a folder to write the blob into, a tensor at a time, as an unlinked file mapped
    read-only (it goes when the last view of it does): a full model then costs no memory
    beyond its own tensors to pack and to serve (file pages the kernel may drop). Where the
    file cannot be written (a full disk) the blob is built in memory instead.
    """
    wire, codec_meta, stage_bytes = chain.encode(
        {k: v.detach().contiguous().cpu() for k, v in tensors.items()}
    )
    packed = zstandard.ZstdCompressor(level=19).compress(codec_meta.encode())
    wire[CODEC_TENSOR] = torch.frombuffer(bytearray(packed), dtype=torch.uint8)
    full = {**header, "codec_chain": chain.specs(), "stage_bytes": stage_bytes}
    meta = {HEADER_KEY: json.dumps(full, sort_keys=True, separators=(",", ":"))}
    described = (tensor_bytes(tensors), stage_bytes, tuple(chain.specs()))
    if spool is not None:
        try:
            view, digest = _spooled(wire, meta, spool)
            return Blob(view, digest, *described)
        except OSError as e:
            log.warning("cannot spool a %d-byte blob to %s (%s): building it in memory",
                        described[0], spool, e.strerror or e)
    data = st_save({k: v.contiguous() for k, v in wire.items()}, metadata=meta)
    return Blob(data, sha256(data), *described)


def _spooled(wire: dict[str, torch.Tensor], meta: dict[str, str], folder: Path) -> tuple[memoryview, str]:
    folder.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryFile(dir=folder) as f:  # unlinked already: nothing to clean up
        size, digest = st_write(wire, meta, f)
        f.flush()
        return memoryview(mmap.mmap(f.fileno(), size, access=mmap.ACCESS_READ)), digest


# what parsing a peer's JSON may raise besides ValueError: too deep (RecursionError), a value of
# another type where a string or object is due (TypeError, AttributeError), a number too large
# for a float or int conversion (OverflowError)
_JSON_ERRORS = (ValueError, AttributeError, TypeError, RecursionError, OverflowError)
MAX_DIMS = 8          # the most dimensions a wire tensor may declare
MAX_DIM = 1 << 48     # the largest single dimension (checked before any product is formed)


def _header_length(data: bytes | bytearray | memoryview, limit: int | None = None) -> int:
    if len(data) < 8:
        raise BlobError(f"blob of {len(data)} bytes is too short for a safetensors header")
    (n,) = struct.unpack("<Q", bytes(data[:8]))
    if n > len(data) - 8:
        raise BlobError("safetensors header length exceeds the blob")
    if limit is not None and n > limit:
        raise BlobError(f"safetensors header of {n} bytes, the plan's tensors need at most {limit}")
    return n


def read_header(data: bytes | bytearray | memoryview, limit: int | None = None) -> dict[str, Any]:
    """fedlora's header of a blob, without decoding any tensor; with ``limit``, a longer
    safetensors header is refused before it is parsed."""
    n = _header_length(data, limit)
    try:
        st_header = json.loads(bytes(data[8 : 8 + n]))
        raw = (st_header.get("__metadata__") or {}).get(HEADER_KEY)
        header = json.loads(raw) if raw else {}
    except _JSON_ERRORS as e:
        raise BlobError(f"blob header is not valid JSON: {type(e).__name__}: {e}") from None
    if not isinstance(header, dict):
        raise BlobError("blob header is not a JSON object")
    return header


def unpack(data: bytes | bytearray | memoryview,
           expect: Expectation | None = None) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Decodes a blob to its tensors (original names) and its header.

    With ``expect`` (the coordinator, reading an upload) nothing the blob declares is trusted:
    the codec description is inflated to at most what the plan's tensors need, checked against
    the plan's chain and tensors, and every wire tensor's dtype and shape against it, all before
    any tensor is read; each part is then inflated to exactly its planned size
    (:class:`CodecError` otherwise, as a :class:`BlobError`). ``data`` may be any buffer (a
    ``bytearray`` upload, an ``mmap`` of a spooled one): only each tensor is copied out.
    """
    header = read_header(data, expect.header_bytes() if expect is not None else None)
    if expect is not None:
        return _unpack_checked(memoryview(data), expect), header
    try:
        wire = st_load(bytes(data))
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


def _entries(view: memoryview) -> dict[str, tuple[torch.dtype, tuple[int, ...], int, int]]:
    """The safetensors header's tensors: dtype, shape and absolute byte range, each checked to
    lie within the blob and to be exactly the size its dtype and shape need."""
    (n,) = struct.unpack("<Q", view[:8])
    body = 8 + n
    try:
        raw = json.loads(bytes(view[8:body]))
    except _JSON_ERRORS as e:
        raise BlobError(f"blob header is not valid JSON: {type(e).__name__}: {e}") from None
    if not isinstance(raw, dict):
        raise BlobError("blob header is not a JSON object")
    out = {}
    for name, e in raw.items():
        if name == "__metadata__":
            continue
        try:
            dtype = _ST_DTYPES[e["dtype"]]
            if len(e["shape"]) > MAX_DIMS:
                raise ValueError("too many dimensions")
            shape = tuple(int(d) for d in e["shape"])
            if any(not 0 <= d <= MAX_DIM for d in shape):
                raise ValueError("dimension out of range")
            begin, end = (int(x) for x in e["data_offsets"])
        except (KeyError, TypeError, ValueError, OverflowError):
            raise BlobError(f"blob header entry {name!r} is malformed") from None
        size = torch.empty((), dtype=dtype).element_size()
        for d in shape:
            size *= d
        if not 0 <= begin <= end <= len(view) - body or end - begin != size:
            raise BlobError(f"blob header entry {name!r} does not fit the blob")
        out[name] = (dtype, shape, body + begin, body + end)
    return out


def _read(view: memoryview, entry: tuple[torch.dtype, tuple[int, ...], int, int]) -> torch.Tensor:
    dtype, shape, begin, end = entry
    raw = bytearray(view[begin:end])
    drop_pages(view, begin, end)
    if not raw:
        return torch.empty(shape, dtype=dtype)
    target = torch.uint8 if dtype == torch.bool else dtype
    t = torch.frombuffer(raw, dtype=target).reshape(shape)
    return t.to(torch.bool) if dtype == torch.bool else t


class Decoded(Mapping[str, torch.Tensor]):
    """A checked blob's tensors by original name, each decoded when it is asked for and not
    kept: iterating a full model's upload holds one decoded tensor at a time, not the model.
    Everything the blob declares was checked against the plan when this was built; a tensor
    that still fails to decode raises :class:`BlobError` naming it. Each access decodes anew
    (the buffer, e.g. an mmap of a spooled upload, stays referenced while this lives)."""

    def __init__(self, view: memoryview, entries: dict[str, tuple[torch.dtype, tuple[int, ...], int, int]],
                 desc: dict[str, Any], stages: list):
        self._view, self._entries, self._desc, self._stages = view, entries, desc, stages
        self._index = {n: i for i, n in enumerate(desc["names"])}

    def __getitem__(self, name: str) -> torch.Tensor:
        i = self._index[name]
        try:
            return decode_one(self._stages, self._desc, i, lambda w: _read(self._view, self._entries[w]))
        except CodecError as e:
            raise BlobError(str(e)) from None
        except (KeyError, ValueError, RuntimeError, TypeError, IndexError) as e:
            raise BlobError(f"cannot decode tensor {name!r}: {e}") from None

    def __iter__(self) -> Iterator[str]:
        return iter(self._desc["names"])

    def __len__(self) -> int:
        return len(self._desc["names"])


def unpack_lazy(data: bytes | bytearray | memoryview, expect: Expectation) -> tuple[Decoded, dict[str, Any]]:
    """:func:`unpack` for a receiver that checks against ``expect`` and wants the tensors one at
    a time (:class:`Decoded`): the same checks, all before anything is decoded."""
    header = read_header(data, expect.header_bytes())
    return _checked(memoryview(data), expect), header


def _checked(view: memoryview, expect: Expectation) -> Decoded:
    entries = _entries(view)
    codec = entries.pop(CODEC_TENSOR, None)
    if codec is None or codec[0] != torch.uint8 or len(codec[1]) != 1:
        raise BlobError(f"blob has no {CODEC_TENSOR} description")
    try:
        meta = inflate(bytes(view[codec[2]:codec[3]]), expect.description_bytes(), exact=False)
        try:
            desc = json.loads(meta)
        except ValueError as e:
            raise CodecError(f"codec description is not JSON: {e}") from None
        bounds = Chain.bounds(desc, expect)
        check_wire(bounds, {w: (e[0], e[1]) for w, e in entries.items()}, desc["names"])
    except CodecError as e:
        raise BlobError(str(e)) from None
    except (KeyError, ValueError, RuntimeError, TypeError, IndexError) as e:
        raise BlobError(f"cannot decode codec chain: {e}") from None
    return Decoded(view, entries, desc, Chain.parse(expect.chain).stages)


def _unpack_checked(view: memoryview, expect: Expectation) -> dict[str, torch.Tensor]:
    lazy = _checked(view, expect)
    return {name: lazy[name] for name in lazy}
