"""Composable tensor codecs, the same code on both ends of the wire.

A chain is a list of stages applied in order on encode and in reverse on decode. Each stage
turns one tensor into one or more named *parts* (still tensors), so the encoded result is
again a flat ``name -> tensor`` dict that safetensors can carry: the blob on the wire is
always a valid safetensors file, whatever the chain. What each stage needs to undo itself
(dtype, shape, part names) travels in the blob's header (see :mod:`fedlora.common.blob`).

Stages are named by a spec string, ``"zstd"`` or ``"zstd:9"``; :func:`parse_chain` turns a
list of specs into stage objects and rejects unknown names with the offending spec.
"""

from __future__ import annotations

import json
import math
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from collections.abc import Callable
from typing import Any, ClassVar

import numpy as np
import torch
import zstandard

from fedlora.common.wire.protocol import HEADER_SLACK

Parts = dict[str, torch.Tensor]
TensorSpec = tuple[tuple[int, ...], torch.dtype]  # what the plan expects of one tensor

_DTYPES: dict[str, torch.dtype] = {
    str(d).removeprefix("torch."): d
    for d in (
        torch.float32, torch.float16, torch.bfloat16, torch.float64,
        torch.int8, torch.uint8, torch.int16, torch.int32, torch.int64, torch.bool,
    )
}


def dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


def dtype_from_name(name: str) -> torch.dtype:
    try:
        return _DTYPES[name]
    except KeyError:
        raise ValueError(f"unsupported dtype {name!r}") from None


def tensor_to_bytes(t: torch.Tensor) -> bytes:
    """Raw little-endian bytes of a tensor, any dtype (bf16 included), any shape."""
    flat = t.detach().contiguous().reshape(-1).cpu()
    if flat.dtype == torch.bool:
        flat = flat.to(torch.uint8)
    return flat.view(torch.uint8).numpy().tobytes()


def tensor_from_bytes(data: bytes, dtype: torch.dtype, shape: list[int]) -> torch.Tensor:
    raw = torch.frombuffer(bytearray(data), dtype=torch.uint8) if data else torch.empty(0, dtype=torch.uint8)
    target = torch.uint8 if dtype == torch.bool else dtype
    out = raw.view(target).reshape(shape)
    return out.to(torch.bool) if dtype == torch.bool else out


class CodecError(ValueError):
    """A blob whose codec description or parts are not what the plan allows: the message names
    the tensor and what was wrong. Raised before anything the size of the claim is allocated."""


@dataclass(frozen=True)
class Bound:
    """What one tensor may be at one point of a chain, derived from the plan alone: its dtype
    and its exact shape, or (``shape`` None) one dimension of at most ``max_numel`` elements,
    for the parts whose length depends on the data (compressed bytes, top-k entries)."""

    dtype: torch.dtype
    shape: tuple[int, ...] | None
    max_numel: int = 0
    note: str = ""  # what the bound comes from, for messages

    @property
    def numel(self) -> int:
        """Exact element count, or the most there may be."""
        return math.prod(self.shape) if self.shape is not None else self.max_numel

    def admits(self, dtype: torch.dtype, shape: tuple[int, ...]) -> bool:
        if dtype != self.dtype:
            return False
        if self.shape is not None:
            return tuple(shape) == self.shape
        return len(shape) == 1 and shape[0] <= self.max_numel

    def describe(self) -> str:
        shape = list(self.shape) if self.shape is not None else f"[<= {self.max_numel}]"
        return f"{dtype_name(self.dtype)} {shape}" + (f" ({self.note})" if self.note else "")


def element_size(dtype: torch.dtype) -> int:
    return torch.empty((), dtype=dtype).element_size()


def zstd_bound(nbytes: int) -> int:
    """The most bytes zstd can turn ``nbytes`` into (``ZSTD_COMPRESSBOUND``) plus a frame."""
    return nbytes + (nbytes >> 8) + (((128 << 10) - nbytes) >> 11 if nbytes < 128 << 10 else 0) + 64


def inflate(data: bytes, limit: int, exact: bool) -> bytes:
    """One zstd frame inflated to at most (``exact``: exactly) ``limit`` bytes. A frame that
    declares more is refused before any allocation (zstandard would allocate what the frame
    declares, whatever ``max_output_size`` says); one without a declared size is inflated into
    a ``limit``-byte buffer, and refused if it does not fit."""
    want = f"{'exactly' if exact else 'at most'} {limit} bytes"
    try:
        declared = zstandard.frame_content_size(data)
    except zstandard.ZstdError as e:
        raise CodecError(f"not a zstd frame ({e})") from None
    if declared != -1 and (declared > limit or (exact and declared != limit)):
        raise CodecError(f"zstd frame declares {declared} bytes, the plan allows {want}")
    try:
        out = zstandard.ZstdDecompressor().decompress(data, max_output_size=max(limit, 1),
                                                      allow_extra_data=False)
    except zstandard.ZstdError as e:
        raise CodecError(f"zstd frame does not inflate to {want} ({e})") from None
    if len(out) > limit or (exact and len(out) != limit):
        raise CodecError(f"zstd frame inflates to {len(out)} bytes, the plan allows {want}")
    return out


def _declared(label: str, stage: str, b: Bound, info: dict[str, Any]) -> tuple[int, ...]:
    """The shape a stage's info declares for ``label``, if the bound admits it (and its dtype)."""
    shape = info.get("shape")
    if not (isinstance(shape, list) and all(type(d) is int and d >= 0 for d in shape)):
        raise CodecError(f"tensor {label!r}: {stage} declares no valid shape ({shape!r})")
    if info.get("dtype") != dtype_name(b.dtype):
        raise CodecError(f"tensor {label!r}: {stage} declares dtype {info.get('dtype')!r}, "
                         f"the plan says {dtype_name(b.dtype)}")
    if not b.admits(b.dtype, tuple(shape)):
        raise CodecError(f"tensor {label!r}: {stage} declares shape {shape}, the plan says "
                         f"{b.describe()}")
    return tuple(shape)


def _plain(label: str, stage: str, info: dict[str, Any], b: Bound) -> dict[str, Bound]:
    """A tensor the stage passes through untouched: it must declare nothing."""
    if info:
        raise CodecError(f"tensor {label!r}: {stage} passes {dtype_name(b.dtype)} tensors through, "
                         f"yet declares {sorted(info)}")
    return {"": b}


class Stage(ABC):
    """One step of a codec chain. ``lossless`` stages round-trip bit-exactly; lossy ones
    document their error bound in their docstring and have a test of it.

    A stage sees each tensor with its name (so stateful stages, such as top-k with error
    feedback, keep per-tensor state) and returns the parts that replace it. Stages apply to
    floating-point tensors; other dtypes (indices, codes) pass through the lossy ones untouched.
    """

    name: ClassVar[str]
    lossless: ClassVar[bool]

    @abstractmethod
    def encode(self, name: str, t: torch.Tensor) -> tuple[Parts, dict[str, Any]]:
        """Returns the parts that replace ``t`` and the info :meth:`decode` needs."""

    @abstractmethod
    def decode(self, parts: Parts, info: dict[str, Any]) -> torch.Tensor: ...

    @abstractmethod
    def bound(self, label: str, b: Bound, info: dict[str, Any]) -> dict[str, Bound]:
        """The parts :meth:`encode` makes of a tensor within ``b``, if ``info`` is what it
        would have written for one; else :class:`CodecError`. How a receiver checks a blob
        against the plan before decoding anything."""

    def spec(self) -> str:
        return self.name

    def state(self) -> dict[str, torch.Tensor]:
        """What this stage carries from one encode to the next, by tensor name (none for a
        stateless stage): the client keeps it by round, so a redone round starts from the
        state before it (client/roundstate.py)."""
        return {}

    def restore(self, state: dict[str, torch.Tensor]) -> None:
        """Sets the carried state; an empty dict is the stage as new."""

    @classmethod
    def from_arg(cls, arg: str) -> "Stage":
        if arg:
            raise ValueError(f"codec stage {cls.name!r} takes no argument")
        return cls()


class Identity(Stage):
    name = "identity"
    lossless = True

    def encode(self, name: str, t: torch.Tensor) -> tuple[Parts, dict[str, Any]]:
        return {"": t}, {}

    def decode(self, parts: Parts, info: dict[str, Any]) -> torch.Tensor:
        return parts[""]

    def bound(self, label: str, b: Bound, info: dict[str, Any]) -> dict[str, Bound]:
        return _plain(label, self.name, info, b)


@dataclass
class Zstd(Stage):
    """Lossless byte compression of each tensor's raw bytes, carried as a uint8 tensor."""

    level: int = 3
    name: ClassVar[str] = "zstd"
    lossless: ClassVar[bool] = True

    def __post_init__(self) -> None:
        if not 1 <= self.level <= 22:
            raise ValueError(f"zstd level must be in 1..22, got {self.level}")

    @classmethod
    def from_arg(cls, arg: str) -> "Zstd":
        return cls(int(arg)) if arg else cls()

    def spec(self) -> str:
        return f"zstd:{self.level}"

    def encode(self, name: str, t: torch.Tensor) -> tuple[Parts, dict[str, Any]]:
        packed = zstandard.ZstdCompressor(level=self.level).compress(tensor_to_bytes(t))
        arr = torch.from_numpy(np.frombuffer(packed, dtype=np.uint8).copy())
        return {"": arr}, {"dtype": dtype_name(t.dtype), "shape": list(t.shape)}

    def decode(self, parts: Parts, info: dict[str, Any]) -> torch.Tensor:
        dtype, shape = dtype_from_name(info["dtype"]), [int(d) for d in info["shape"]]
        raw = inflate(tensor_to_bytes(parts[""]), math.prod(shape) * element_size(dtype), exact=True)
        return tensor_from_bytes(raw, dtype, shape)

    def bound(self, label: str, b: Bound, info: dict[str, Any]) -> dict[str, Bound]:
        nbytes = math.prod(_declared(label, self.name, b, info)) * element_size(b.dtype)
        return {"": Bound(torch.uint8, None, zstd_bound(nbytes), f"zstd of {nbytes} bytes")}


@dataclass
class Cast(Stage):
    """Casts floating-point tensors to fp16 or bf16 and back.

    Error bound, per element, for |x| within the target's normal range: relative error at most
    2^-11 (fp16) or 2^-8 (bf16), i.e. half a unit in the last place. fp16 saturates: values
    beyond +-65504 are clamped to +-65504 rather than becoming Inf.
    """

    target: str = "fp16"
    name: ClassVar[str] = "cast"
    lossless: ClassVar[bool] = False
    TARGETS: ClassVar[dict[str, torch.dtype]] = {"fp16": torch.float16, "bf16": torch.bfloat16}

    def __post_init__(self) -> None:
        if self.target not in self.TARGETS:
            raise ValueError(f"cast target must be fp16 or bf16, got {self.target!r}")

    @classmethod
    def from_arg(cls, arg: str) -> "Cast":
        return cls(arg or "fp16")

    def spec(self) -> str:
        return self.target  # written as "fp16" / "bf16"

    def encode(self, name: str, t: torch.Tensor) -> tuple[Parts, dict[str, Any]]:
        dtype = self.TARGETS[self.target]
        if not t.is_floating_point() or t.dtype == dtype:
            return {"": t}, {}
        if dtype == torch.float16:
            t = t.clamp(-65504.0, 65504.0)
        return {"": t.to(dtype)}, {"dtype": dtype_name(t.dtype)}

    def decode(self, parts: Parts, info: dict[str, Any]) -> torch.Tensor:
        t = parts[""]
        return t.to(dtype_from_name(info["dtype"])) if "dtype" in info else t

    def bound(self, label: str, b: Bound, info: dict[str, Any]) -> dict[str, Bound]:
        target = self.TARGETS[self.target]
        if not b.dtype.is_floating_point or b.dtype == target:
            return _plain(label, self.target, info, b)
        if info != {"dtype": dtype_name(b.dtype)}:
            raise CodecError(f"tensor {label!r}: {self.target} cast of a {dtype_name(b.dtype)} "
                             f"tensor declares {info!r}")
        return {"": Bound(target, b.shape, b.max_numel)}


@dataclass
class Int8(Stage):
    """Blockwise absmax int8: each block of ``block`` values is scaled by absmax/127.

    Error bound: |x - decode(encode(x))| <= absmax(block) / 254 per element (half a step),
    plus the rounding of the fp32 scale. Zero blocks decode to exact zeros.
    """

    block: int = 256
    name: ClassVar[str] = "int8"
    lossless: ClassVar[bool] = False

    def __post_init__(self) -> None:
        if not 1 <= self.block <= 1 << 20:
            raise ValueError(f"int8 block size must be in 1..1048576, got {self.block}")

    @classmethod
    def from_arg(cls, arg: str) -> "Int8":
        return cls(int(arg)) if arg else cls()

    def spec(self) -> str:
        return f"int8:{self.block}"

    def encode(self, name: str, t: torch.Tensor) -> tuple[Parts, dict[str, Any]]:
        if not t.is_floating_point():
            return {"": t}, {}
        flat = t.detach().reshape(-1).to(torch.float32)
        n = flat.numel()
        pad = (-n) % self.block
        blocks = torch.nn.functional.pad(flat, (0, pad)).reshape(-1, self.block)
        scale = blocks.abs().amax(dim=1) / 127.0
        safe = torch.where(scale > 0, scale, torch.ones_like(scale))
        q = torch.round(blocks / safe[:, None]).clamp_(-127, 127).to(torch.int8)
        return ({"q": q.reshape(-1)[:n].contiguous(), "scale": scale},
                {"dtype": dtype_name(t.dtype), "shape": list(t.shape), "block": self.block})

    def decode(self, parts: Parts, info: dict[str, Any]) -> torch.Tensor:
        if "block" not in info:
            return parts[""]
        q, scale, block = parts["q"], parts["scale"], int(info["block"])
        n = q.numel()
        if n != math.prod(info["shape"]) or scale.numel() != -(-n // block):
            raise CodecError(f"int8 parts of {n} codes and {scale.numel()} scales do not fit "
                             f"shape {info['shape']} in blocks of {block}")
        pad = (-n) % block
        blocks = torch.nn.functional.pad(q.to(torch.float32), (0, pad)).reshape(-1, block)
        out = (blocks * scale.to(torch.float32)[:, None]).reshape(-1)[:n]
        return out.reshape(info["shape"]).to(dtype_from_name(info["dtype"]))

    def bound(self, label: str, b: Bound, info: dict[str, Any]) -> dict[str, Bound]:
        if not b.dtype.is_floating_point:
            return _plain(label, self.spec(), info, b)
        if info.get("block") != self.block:
            raise CodecError(f"tensor {label!r}: int8 block {info.get('block')!r}, the plan's "
                             f"chain says {self.block}")
        n = math.prod(_declared(label, "int8", b, info))
        return {"q": Bound(torch.int8, (n,)), "scale": Bound(torch.float32, (-(-n // self.block),))}


@dataclass
class TopK(Stage):
    """Keeps the k largest-magnitude entries of each tensor (k = ``fraction`` x numel, at least 1).

    With error feedback (on by default; the client keeps the residual by round, see
    :meth:`Stage.state`), what a round leaves out is added to the same tensor next round, so
    nothing is lost, only delayed:
    sum of sent = sum of inputs - final residual, exactly. Error bound of one encode: every
    dropped entry is at most the k-th largest magnitude; kept entries are exact.
    """

    fraction: float = 0.1
    error_feedback: bool = True
    name: ClassVar[str] = "topk"
    lossless: ClassVar[bool] = False
    residual: dict[str, torch.Tensor] = field(default_factory=dict, repr=False)

    def __post_init__(self) -> None:
        if not 0 < self.fraction <= 1:
            raise ValueError(f"topk fraction must be in (0, 1], got {self.fraction}")

    @classmethod
    def from_arg(cls, arg: str) -> "TopK":
        return cls(float(arg)) if arg else cls()

    def spec(self) -> str:
        return f"topk:{self.fraction:g}"

    def state(self) -> dict[str, torch.Tensor]:
        return dict(self.residual)

    def restore(self, state: dict[str, torch.Tensor]) -> None:
        self.residual = dict(state)

    def encode(self, name: str, t: torch.Tensor) -> tuple[Parts, dict[str, Any]]:
        if not t.is_floating_point() or t.numel() == 0:
            return {"": t}, {}
        x = t.detach().reshape(-1).to(torch.float32)
        if self.error_feedback and name in self.residual and self.residual[name].numel() == x.numel():
            x = x + self.residual[name]
        k = max(1, int(round(self.fraction * x.numel())))
        idx = torch.topk(x.abs(), k, sorted=False).indices
        idx = torch.sort(idx).values
        values = x[idx]
        if self.error_feedback:
            rest = x.clone()
            rest[idx] = 0.0
            self.residual[name] = rest
        # indices as gaps from the previous kept index: small numbers that a following zstd
        # stage packs far better than absolute positions
        gaps = torch.diff(idx, prepend=torch.zeros(1, dtype=idx.dtype))
        index_dtype = torch.int32 if x.numel() < 2**31 else torch.int64
        return ({"idx": gaps.to(index_dtype), "val": values.to(t.dtype)},
                {"dtype": dtype_name(t.dtype), "shape": list(t.shape)})

    def decode(self, parts: Parts, info: dict[str, Any]) -> torch.Tensor:
        if "shape" not in info:
            return parts[""]
        dtype = dtype_from_name(info["dtype"])
        n = 1
        for d in info["shape"]:
            n *= int(d)
        if parts["idx"].numel() != parts["val"].numel() or parts["idx"].numel() > n:
            raise CodecError(f"topk sends {parts['idx'].numel()} indices and {parts['val'].numel()} "
                             f"values for {n} elements")
        gaps = parts["idx"].to(torch.int64)
        if gaps.numel() > 1 and int(gaps[1:].min()) <= 0:
            raise ValueError("topk indices must be strictly increasing")
        idx = torch.cumsum(gaps, 0)
        if idx.numel() and (int(idx.min()) < 0 or int(idx.max()) >= n):
            raise ValueError(f"topk index out of range for {n} elements")
        out = torch.zeros(n, dtype=dtype)
        out[idx] = parts["val"].to(dtype)
        return out.reshape(info["shape"])

    def bound(self, label: str, b: Bound, info: dict[str, Any]) -> dict[str, Bound]:
        if not b.dtype.is_floating_point or (not info and (b.shape is None or b.numel == 0)):
            # passed through as encode does an empty tensor (a part that may be empty included)
            return _plain(label, "topk", info, b)
        n = math.prod(_declared(label, "topk", b, info))
        k = max(1, int(round(self.fraction * n)))
        index = torch.int32 if n < 2**31 else torch.int64
        return {"idx": Bound(index, None, k), "val": Bound(b.dtype, None, k)}


STAGES: dict[str, type[Stage]] = {
    "identity": Identity, "zstd": Zstd, "int8": Int8, "topk": TopK, "fp16": Cast, "bf16": Cast,
}


def parse_stage(spec: str) -> Stage:
    """``zstd:9``, ``int8:128``, ``topk:0.1``, ``fp16``, ``bf16``, ``identity``."""
    name, _, arg = spec.partition(":")
    cls = STAGES.get(name)
    if cls is None:
        raise ValueError(f"unknown codec stage {spec!r} (known: {', '.join(sorted(STAGES))})")
    if cls is Cast:
        if arg:
            raise ValueError(f"codec stage {name!r} takes no argument, got {spec!r}")
        return Cast(name)
    try:
        return cls.from_arg(arg)
    except ValueError as e:
        raise ValueError(f"bad codec stage {spec!r}: {e}") from None


@dataclass
class Chain:
    stages: list[Stage] = field(default_factory=list)

    @classmethod
    def parse(cls, specs: list[str] | tuple[str, ...]) -> "Chain":
        return cls([parse_stage(s) for s in specs])

    def specs(self) -> list[str]:
        return [s.spec() for s in self.stages]

    def state(self) -> dict[str, torch.Tensor]:
        """Every stage's carried state, named ``<stage index>/<tensor name>``."""
        return {f"{i}/{n}": t for i, stage in enumerate(self.stages) for n, t in stage.state().items()}

    def restore(self, state: dict[str, torch.Tensor]) -> None:
        """Sets every stage's carried state from :meth:`state`'s output (missing: as new)."""
        for i, stage in enumerate(self.stages):
            stage.restore({n.split("/", 1)[1]: t for n, t in state.items() if n.split("/", 1)[0] == str(i)})

    def encode(self, tensors: dict[str, torch.Tensor]) -> tuple[Parts, str, list[int]]:
        """Encodes every tensor; returns the wire tensors, the description decode needs, and
        the raw tensor bytes after each stage (for per-stage accounting).

        Wire tensors get short names (``3``, ``3.q``, ``3.scale``: the index of the original
        name, then the part keys) and the original names are listed once, so the header stays
        small next to the data even for adapters of many small tensors.
        """
        names = sorted(tensors)
        current = {str(i): tensors[n] for i, n in enumerate(names)}
        labels = {str(i): n for i, n in enumerate(names)}  # stateful stages key on the real name
        layers: list[dict[str, Any]] = []
        sizes: list[int] = []
        for stage in self.stages:
            nxt: Parts = {}
            layer: dict[str, Any] = {}
            for wire_name, t in current.items():
                parts, info = stage.encode(labels[wire_name], t)
                entry: dict[str, Any] = {}
                if list(parts) != [""]:
                    entry["p"] = list(parts)
                if info:
                    entry["i"] = info
                layer[wire_name] = entry
                for key, t_part in parts.items():
                    child = wire_name if key == "" else f"{wire_name}.{key}"
                    nxt[child] = t_part
                    labels[child] = labels[wire_name] if key == "" else f"{labels[wire_name]}.{key}"
            layers.append(layer)
            current = nxt
            sizes.append(sum(t.numel() * t.element_size() for t in current.values()))
        meta = json.dumps({"stages": self.specs(), "names": names, "layers": layers},
                          separators=(",", ":"))
        return current, meta, sizes

    @staticmethod
    def bounds(desc: Any, expect: "Expectation") -> dict[str, Bound]:
        """Checks a blob's codec description against the plan (its chain, the expected
        tensors, every shape, dtype and block it declares) and returns what each wire tensor
        may be. Nothing is decoded or allocated here; :class:`CodecError` names what is wrong."""
        if not isinstance(desc, dict):
            raise CodecError("codec description is not a JSON object")
        stages, names, layers = desc.get("stages"), desc.get("names"), desc.get("layers")
        if not (isinstance(stages, list) and all(isinstance(x, str) for x in stages)):
            raise CodecError(f"codec description names no chain ({stages!r})")
        try:
            theirs = Chain.parse(stages).specs()
        except ValueError as e:
            raise CodecError(f"codec chain {stages}: {e}") from None
        if theirs != list(expect.chain):
            raise CodecError(f"codec chain {theirs} is not the plan's {list(expect.chain)}")
        if not (isinstance(names, list) and all(isinstance(n, str) for n in names)):
            raise CodecError("codec description lists no tensor names")
        if len(set(names)) != len(names):
            raise CodecError("codec description lists a tensor name twice")
        extra = sorted(set(names) - set(expect.tensors))
        if extra:
            raise CodecError(f"tensor {extra[0]!r} is not in the plan")
        if not (isinstance(layers, list) and len(layers) == len(stages)):
            raise CodecError("codec description has not one layer per stage")
        current = {str(i): Bound(expect.tensors[n][1], tuple(expect.tensors[n][0]))
                   for i, n in enumerate(names)}
        for stage, layer in zip(Chain.parse(expect.chain).stages, layers):
            if not isinstance(layer, dict) or set(layer) != set(current):
                raise CodecError(f"codec description's {stage.spec()} layer does not list the "
                                 f"tensors the chain makes")
            nxt: dict[str, Bound] = {}
            for w, b in current.items():
                label = wire_label(names, w)
                entry = layer[w]
                parts = entry.get("p", [""]) if isinstance(entry, dict) else None
                info = entry.get("i", {}) if isinstance(entry, dict) else None
                if not isinstance(info, dict):
                    raise CodecError(f"tensor {label!r}: {stage.spec()} entry is malformed")
                out = stage.bound(label, b, info)
                if parts != list(out):
                    raise CodecError(f"tensor {label!r}: {stage.spec()} parts {parts!r}, the "
                                     f"stage makes {list(out)}")
                for key, part in out.items():
                    nxt[w if key == "" else f"{w}.{key}"] = part
            current = nxt
        return current

    @staticmethod
    def decode(wire: Parts, meta: str, expect: "Expectation | None" = None) -> dict[str, torch.Tensor]:
        """Undoes a chain described by ``meta``. With ``expect`` (what a receiver planned: the
        coordinator, for uploads) the description and every wire tensor are first checked
        against it (:meth:`bounds`, :func:`check_wire`); without, the chain is read from the
        blob itself (a client trusting its coordinator's downloads)."""
        desc = json.loads(meta)
        if expect is not None:
            check_wire(Chain.bounds(desc, expect), {w: (t.dtype, tuple(t.shape)) for w, t in wire.items()},
                       desc["names"])
            stages = Chain.parse(expect.chain).stages
        else:
            stages = [parse_stage(s) for s in desc["stages"]]
        names = desc["names"]
        current = dict(wire)
        for stage, layer in zip(reversed(stages), reversed(desc["layers"])):
            prev: dict[str, torch.Tensor] = {}
            for wire_name, entry in layer.items():
                keys = entry.get("p", [""])
                parts = {k: current[wire_name if k == "" else f"{wire_name}.{k}"] for k in keys}
                try:
                    prev[wire_name] = stage.decode(parts, entry.get("i", {}))
                except CodecError as e:
                    raise CodecError(f"tensor {wire_label(names, wire_name)!r}: {stage.name}: {e}") from None
            current = prev
        return {names[int(w)]: t for w, t in current.items()}


def decode_one(stages: list[Stage], desc: dict[str, Any], index: int,
               read: Callable[[str], torch.Tensor]) -> torch.Tensor:
    """Undoes the chain for the one tensor ``names[index]`` of a checked description, reading
    only its own wire parts (``read(wire_name)``): what lets a receiver decode a large blob a
    tensor at a time instead of holding all of it decoded."""
    head = str(index)
    current: dict[str, torch.Tensor] | None = None  # None: the wire itself
    for stage, layer in zip(reversed(stages), reversed(desc["layers"])):
        prev: dict[str, torch.Tensor] = {}
        for wire_name, entry in layer.items():
            if wire_name.partition(".")[0] != head:
                continue
            keys = entry.get("p", [""])
            names = [wire_name if k == "" else f"{wire_name}.{k}" for k in keys]
            parts = {k: (read(n) if current is None else current[n]) for k, n in zip(keys, names)}
            try:
                prev[wire_name] = stage.decode(parts, entry.get("i", {}))
            except CodecError as e:
                raise CodecError(f"tensor {wire_label(desc['names'], wire_name)!r}: {stage.name}: {e}") from None
        current = prev
    return read(head) if current is None else current[head]


def wire_label(names: list[str], wire_name: str) -> str:
    """The readable name of a wire tensor: ``3.val.q`` of ``w`` is ``w.val.q``."""
    head, _, rest = wire_name.partition(".")
    try:
        base = names[int(head)]
    except (ValueError, IndexError):
        return wire_name
    return f"{base}.{rest}" if rest else base


def check_wire(bounds: dict[str, Bound], found: dict[str, tuple[torch.dtype, tuple[int, ...]]],
               names: list[str]) -> None:
    """The wire tensors are exactly those the checked description makes, each within its bound."""
    extra = sorted(set(found) - set(bounds))
    if extra:
        raise CodecError(f"wire tensor {extra[0]!r} is not one the codec chain makes")
    missing = sorted(set(bounds) - set(found))
    if missing:
        raise CodecError(f"tensor {wire_label(names, missing[0])!r}: wire part missing")
    for w, (dtype, shape) in found.items():
        if not bounds[w].admits(dtype, shape):
            raise CodecError(f"tensor {wire_label(names, w)!r}: wire part is {dtype_name(dtype)} "
                             f"{list(shape)}, the plan says {bounds[w].describe()}")


@dataclass(frozen=True)
class Expectation:
    """What a receiver planned for a blob: the codec chain (normalised specs) and every
    tensor's shape and dtype by original name. Built from the round's Instruction; every size
    a blob declares is checked against it before anything is decoded."""

    chain: tuple[str, ...]
    tensors: dict[str, TensorSpec]

    @classmethod
    def of(cls, stages: list[str] | tuple[str, ...], tensors: dict[str, TensorSpec]) -> "Expectation":
        return cls(tuple(Chain.parse(list(stages)).specs()),
                   {n: (tuple(int(d) for d in s), d) for n, (s, d) in tensors.items()})

    def header_bytes(self) -> int:
        """The most bytes an honest safetensors JSON header of such a blob takes: fedlora's
        metadata (HEADER_SLACK) and, per wire tensor (at most three parts per planned tensor,
        plus ``__codec__``), its short name, dtype, shape and offsets. A longer header is refused
        before it is parsed: parsing is where a lie would cost memory and time."""
        per_entry = 128 + 24 * max((len(s) for s, _ in self.tensors.values()), default=0)
        return HEADER_SLACK + 3 * (len(self.tensors) + 1) * per_entry

    def description_bytes(self) -> int:
        """The most bytes an honest codec description of these tensors takes: the names once,
        and per stage an entry (part keys, dtype, shape, block) for each of at most three parts
        per tensor. The ``__codec__`` tensor is inflated to at most this."""
        per_entry = 160 + 24 * max((len(s) for s, _ in self.tensors.values()), default=0)
        names = sum(len(json.dumps(n)) + 1 for n in self.tensors)
        return 4096 + names + 3 * len(self.tensors) * (len(self.chain) + 1) * per_entry
