"""Checks an update against the plan before any strategy sees it."""

from __future__ import annotations

import torch

from fedlora.common.errors import Refused, Status
from fedlora.server.strategy import TensorSpec


def validate_update(tensors: dict[str, torch.Tensor], expected: dict[str, TensorSpec]) -> None:
    """Refuses (INVALID_ARGUMENT) unless names, shapes and dtypes are exactly the plan's and
    every value is finite."""
    missing = sorted(set(expected) - set(tensors))
    extra = sorted(set(tensors) - set(expected))
    if missing or extra:
        parts = []
        if missing:
            parts.append(f"missing {len(missing)} tensor(s), e.g. {missing[0]!r}")
        if extra:
            parts.append(f"{len(extra)} tensor(s) not in the plan, e.g. {extra[0]!r}")
        raise Refused(Status.INVALID_ARGUMENT, "update does not match the plan: " + "; ".join(parts))
    for name, t in tensors.items():
        shape, dtype = expected[name]
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
