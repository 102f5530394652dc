"""Checks an update against the plan before any strategy sees it."""

from __future__ import annotations

from collections.abc import Mapping

import torch

from fedlora.common.errors import Refused, Status
from fedlora.server.strategy import TensorSpec


def validate_update(tensors: Mapping[str, torch.Tensor], expected: dict[str, TensorSpec]) -> None:
    """Refuses (INVALID_ARGUMENT) unless names, shapes and dtypes are exactly the plan's and
    every value is finite. Tensors are taken one at a time (``tensors`` may decode each on
    access, :class:`fedlora.common.wire.blob.Decoded`)."""
    validate_names(tensors, expected)
    for name in tensors:
        validate_tensor(name, tensors[name], expected[name])


def validate_names(tensors: Mapping[str, torch.Tensor], expected: dict[str, TensorSpec]) -> None:
    """The names are exactly the plan's (no tensor is read)."""
    missing = sorted(set(expected) - set(tensors))
    extra = sorted(set(tensors) - set(expected))
    if missing or extra:
        parts = []
        if missing:
            parts.append(f"missing {len(missing)} tensor(s), e.g. {missing[0]!r}")
        if extra:
            parts.append(f"{len(extra)} tensor(s) not in the plan, e.g. {extra[0]!r}")
        raise Refused(Status.INVALID_ARGUMENT, "update does not match the plan: " + "; ".join(parts))


def validate_tensor(name: str, t: torch.Tensor, spec: TensorSpec) -> None:
    """One tensor has the plan's shape and dtype and only finite values."""
    shape, dtype = spec
    if tuple(t.shape) != tuple(shape):
        raise Refused(Status.INVALID_ARGUMENT,
                      f"tensor {name!r}: shape {tuple(t.shape)}, the plan says {tuple(shape)}")
    if t.dtype != dtype:
        raise Refused(Status.INVALID_ARGUMENT,
                      f"tensor {name!r}: dtype {t.dtype}, the plan says {dtype}")
    if t.is_floating_point() and not bool(torch.isfinite(t).all()):
        bad = int((~torch.isfinite(t)).sum())
        raise Refused(Status.INVALID_ARGUMENT,
                      f"tensor {name!r}: {bad} non-finite value(s) (NaN or Inf)")
