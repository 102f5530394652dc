"""SA-FedLoRA's rank budget: how many LoRA triplets survive each round, and which.

Why: SA-FedLoRA anneals a *parameter budget* (the total LoRA rank over all adapted
layers). It is high while the federation "heats up", so early rounds have capacity to
move, then shrinks during "cooling" and stays at its final value; since pruned ranks
vanish from the wire, communication falls with it (methods.md, "SA-FedLoRA").

The paper gives the idea, not the mechanics. What follows is *ours* per methods.md:
AdaLoRA's budget mechanics lifted from optimiser steps to federated rounds.

- ``BudgetSchedule``: b0 for the heating rounds, then a cooling curve down to b_final
  (a temperature ``T_k = gamma**k`` mapped linearly onto [b_final, b0], or AdaLoRA's cubic
  curve), then b_final for good.
- ``importance.ImportanceEMA`` (client side) scores each triplet.
- ``keep_top`` (coordinator side): given the p_k-weighted sum of the clients' scores,
  smoothed across rounds (strategy.py), keep the round's budget of triplets, highest first,
  with a per-layer floor.
- ``prune``: cut a layer's factors down to the kept triplets.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import torch

__all__ = ["BudgetSchedule", "keep_top", "prune"]


@dataclass(frozen=True)
class BudgetSchedule:
    """Total rank per round: ``b0`` for rounds 1..heating_rounds, a cooling curve over the
    next ``cooling_rounds`` rounds that lands exactly on ``b_final`` on its last round, then
    ``b_final``. Non-increasing over the whole run for either curve."""

    b0: int
    b_final: int
    heating_rounds: int
    cooling_rounds: int
    curve: Literal["temperature", "cubic"] = "temperature"
    gamma: float = 0.7

    def __post_init__(self) -> None:
        if self.b_final < 1:
            raise ValueError(f"b_final must be >= 1, got {self.b_final}")
        if self.b0 < self.b_final:
            raise ValueError(f"b0 must be >= b_final ({self.b_final}), got {self.b0}")
        if self.heating_rounds < 0:
            raise ValueError(f"heating_rounds must be >= 0, got {self.heating_rounds}")
        if self.cooling_rounds < 0:
            raise ValueError(f"cooling_rounds must be >= 0, got {self.cooling_rounds}")
        if self.curve not in ("temperature", "cubic"):
            raise ValueError(f"curve must be 'temperature' or 'cubic', got {self.curve!r}")
        if not 0.0 < self.gamma < 1.0:
            raise ValueError(f"gamma must be in (0, 1), got {self.gamma}")

    def budget(self, rnd: int) -> int:
        """Total rank for round ``rnd`` (rounds start at 1)."""
        if rnd < 1:
            raise ValueError(f"rounds start at 1, got {rnd}")
        k = rnd - self.heating_rounds  # cooling step; <= 0 while heating
        big_k = self.cooling_rounds
        if k <= 0:
            return self.b0
        if k >= big_k:
            return self.b_final
        if self.curve == "cubic":
            frac = (1.0 - k / big_k) ** 3
        else:
            g_k = self.gamma**big_k
            frac = (self.gamma**k - g_k) / (1.0 - g_k)
        return self.b_final + round((self.b0 - self.b_final) * frac)


def keep_top(scores: dict[str, torch.Tensor], budget: int, min_rank: int = 1) -> dict[str, list[int]]:
    """Which triplets to keep: per layer, the sorted indices kept.

    Each layer first keeps its ``min(min_rank, length)`` best triplets (the floor); the rest
    of ``budget`` goes to the globally best remaining triplets. Floors win over the budget:
    if ``budget`` is below the sum of the floors, exactly the floors are kept. In all cases
    the number kept is ``min(total triplets, max(budget, sum of floors))``. Ties are broken
    by layer name, then index (lower first); NaN scores rank lowest.
    """
    if budget < 0:
        raise ValueError(f"budget must be >= 0, got {budget}")
    if min_rank < 0:
        raise ValueError(f"min_rank must be >= 0, got {min_rank}")

    def key(layer: str, idx: int, value: float) -> tuple[float, str, int]:
        return (-value if not math.isnan(value) else math.inf, layer, idx)

    kept: dict[str, list[int]] = {}
    rest: list[tuple[float, str, int]] = []
    total = 0
    for layer in sorted(scores):
        vec = scores[layer]
        if vec.dim() != 1:
            raise ValueError(f"{layer}: scores must be a vector, got shape {tuple(vec.shape)}")
        values = vec.detach().double().cpu().tolist()
        total += len(values)
        ranked = sorted(key(layer, i, v) for i, v in enumerate(values))
        floor = min(min_rank, len(values))
        kept[layer] = [i for _, _, i in ranked[:floor]]
        rest.extend(ranked[floor:])

    floors = sum(len(v) for v in kept.values())
    extra = min(total, max(budget, floors)) - floors
    rest.sort()
    for _, layer, idx in rest[:extra]:
        kept[layer].append(idx)
    return {layer: sorted(kept[layer]) for layer in scores}


def prune(A: torch.Tensor, B: torch.Tensor, keep: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
    """``(A[keep, :], B[:, keep])`` as fresh contiguous tensors."""
    if A.dim() != 2 or B.dim() != 2 or A.shape[0] != B.shape[1]:
        raise ValueError(f"need A (r, d_in) and B (d_out, r), got {tuple(A.shape)} and {tuple(B.shape)}")
    r = A.shape[0]
    if any(not 0 <= i < r for i in keep):
        raise ValueError(f"keep indices must be in [0, {r}), got {keep}")
    idx = torch.as_tensor(keep, dtype=torch.long, device=A.device)
    return A.index_select(0, idx).contiguous(), B.index_select(1, idx.to(B.device)).contiguous()
