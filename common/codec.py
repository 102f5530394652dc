"""Composable tensor codecs, the same code on both ends of the wire.

A chain is a list of stages applied in order on encode and in reverse on decode. Each stage
turns one tensor into one or more named *parts* (still tensors), so the encoded result is
again a flat ``name -> tensor`` dict that safetensors can carry: the blob on the wire is
always a valid safetensors file, whatever the chain. What each stage needs to undo itself
(dtype, shape, part names) travels in the blob's metadata under ``fedlora.codec``.

Stages are named by a spec string, ``"zstd"`` or ``"zstd:9"``; :func:`parse_chain` turns a
list of specs into stage objects and rejects unknown names with the offending spec.
"""

from __future__ import annotations

import json
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Any, ClassVar

import numpy as np
import torch
import zstandard

Parts = dict[str, torch.Tensor]

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


class Stage(ABC):
    """One step of a codec chain. ``lossless`` stages must round-trip bit-exactly."""

    name: ClassVar[str]
    lossless: ClassVar[bool]

    @abstractmethod
    def encode(self, t: torch.Tensor) -> tuple[Parts, dict[str, Any]]:
        """Returns the parts that replace ``t`` and the info :meth:`decode` needs."""

    @abstractmethod
    def decode(self, parts: Parts, info: dict[str, Any]) -> torch.Tensor: ...

    def spec(self) -> str:
        return self.name


class Identity(Stage):
    name = "identity"
    lossless = True

    def encode(self, t: torch.Tensor) -> tuple[Parts, dict[str, Any]]:
        return {"": t}, {}

    def decode(self, parts: Parts, info: dict[str, Any]) -> torch.Tensor:
        return parts[""]


@dataclass
class Zstd(Stage):
    """Lossless byte compression of each tensor's raw bytes, carried as a uint8 tensor."""

    level: int = 3
    name: ClassVar[str] = "zstd"
    lossless: ClassVar[bool] = True

    def __post_init__(self) -> None:
        if not 1 <= self.level <= 22:
            raise ValueError(f"zstd level must be in 1..22, got {self.level}")

    def spec(self) -> str:
        return f"zstd:{self.level}"

    def encode(self, t: torch.Tensor) -> tuple[Parts, dict[str, Any]]:
        packed = zstandard.ZstdCompressor(level=self.level).compress(tensor_to_bytes(t))
        arr = torch.from_numpy(np.frombuffer(packed, dtype=np.uint8).copy())
        return {"": arr}, {"dtype": dtype_name(t.dtype), "shape": list(t.shape)}

    def decode(self, parts: Parts, info: dict[str, Any]) -> torch.Tensor:
        raw = zstandard.ZstdDecompressor().decompress(tensor_to_bytes(parts[""]))
        return tensor_from_bytes(raw, dtype_from_name(info["dtype"]), info["shape"])


STAGES: dict[str, type[Stage]] = {"identity": Identity, "zstd": Zstd}


def parse_stage(spec: str) -> Stage:
    name, _, arg = spec.partition(":")
    cls = STAGES.get(name)
    if cls is None:
        raise ValueError(f"unknown codec stage {spec!r} (known: {', '.join(sorted(STAGES))})")
    if cls is Zstd:
        try:
            return Zstd(int(arg)) if arg else Zstd()
        except ValueError as e:
            raise ValueError(f"bad codec stage {spec!r}: {e}") from None
    if arg:
        raise ValueError(f"codec stage {name!r} takes no argument, got {spec!r}")
    return cls()


@dataclass
class Chain:
    stages: list[Stage] = field(default_factory=list)

    @classmethod
    def parse(cls, specs: list[str] | tuple[str, ...]) -> "Chain":
        return cls([parse_stage(s) for s in specs])

    def specs(self) -> list[str]:
        return [s.spec() for s in self.stages]

    def encode(self, tensors: dict[str, torch.Tensor]) -> tuple[Parts, str, list[int]]:
        """Encodes every tensor; returns the wire tensors, the metadata string, and the
        number of raw tensor bytes after each stage (for per-stage accounting)."""
        current = dict(tensors)
        layers: list[dict[str, Any]] = []
        sizes: list[int] = []
        for stage in self.stages:
            nxt: Parts = {}
            layer: dict[str, Any] = {}
            for name, t in current.items():
                parts, info = stage.encode(t)
                names = {key: (name if key == "" else f"{name}::{key}") for key in parts}
                for key, t_part in parts.items():
                    nxt[names[key]] = t_part
                layer[name] = {"parts": names, "info": info}
            layers.append(layer)
            current = nxt
            sizes.append(sum(t.numel() * t.element_size() for t in current.values()))
        meta = json.dumps({"stages": self.specs(), "layers": layers}, separators=(",", ":"))
        return current, meta, sizes

    @staticmethod
    def decode(wire: Parts, meta: str) -> dict[str, torch.Tensor]:
        """Undoes a chain described by ``meta`` (the chain is read from the blob itself)."""
        desc = json.loads(meta)
        stages = [parse_stage(s) for s in desc["stages"]]
        current = dict(wire)
        for stage, layer in zip(reversed(stages), reversed(desc["layers"])):
            prev: dict[str, torch.Tensor] = {}
            for name, entry in layer.items():
                parts = {key: current[child] for key, child in entry["parts"].items()}
                prev[name] = stage.decode(parts, entry["info"])
            current = prev
        return current
