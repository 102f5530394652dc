"""The aggregation rules methods share: FedAvg's streaming weighted sum, and the rules for LoRA
adapters whose ranks differ between clients (or between layers).

Every rule is streaming: each accepted update is folded in as it arrives and dropped, so the
coordinator holds O(adapter) memory however many clients report (``WeightedSum``: a running
mean, in float64 unless asked for the tensors' own dtype).

A client k's layer computes ``W0 x + s_k B_k A_k x`` with ``s_k = alpha / r_k`` (peft's
scaling). Public HetLoRA code pads and averages the raw factors although each client scales
them by a different ``alpha / r_k``, so a rank-4 client's update counts twice as much as it
should next to a rank-8 one. Every rule here works on the *effective* update ``s_k B_k A_k``:
factors are rescaled into the receiver's scaling on the way in and on the way out, so
``s B A`` means the same thing whatever rank carries it.

- HetLoRA (Cho et al. 2024): zero-pad to ``r_max``, weighted average of the padded factors
  (weights ``p_k`` or the paper's ``||s_k B_k A_k||_F``), truncate back to each client's rank.
- FlexLoRA (Bai et al. 2024): the weighted sum of full products ``sum p_k s_k B_k A_k`` and its
  SVD, redistributed at each client's rank as ``B = U_r S_r / s``, ``A = V_r^T``.

Layers are addressed by their module path (``bert.encoder.layer.0.attention.self.query``);
:func:`fedlora.common.model.lora_pairs` maps peft's wire names onto it.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Literal

import torch

Weighting = Literal["examples", "norm"]
__all__ = ["HetLoRASum", "ProductSum", "WeightedSum", "redistribute", "scaling", "truncate"]


def scaling(alpha: float, rank: int) -> float:
    return alpha / rank


def truncate(A: torch.Tensor, B: torch.Tensor, scale_from: float, rank: int,
             scale_to: float) -> tuple[torch.Tensor, torch.Tensor]:
    """The first ``rank`` triplets, with B rescaled so ``scale_to B' A'`` equals
    ``scale_from B[:, :rank] A[:rank]``; ranks above the held one are zero-padded."""
    r = A.shape[0]
    if rank <= r:
        a, b = A[:rank].clone(), B[:, :rank].clone()
    else:
        a = torch.cat([A, A.new_zeros(rank - r, A.shape[1])])
        b = torch.cat([B, B.new_zeros(B.shape[0], rank - r)], dim=1)
    return a.contiguous(), (b * (scale_from / scale_to)).contiguous()


def redistribute(dW: torch.Tensor, rank: int, scale: float,
                 dtype: torch.dtype = torch.float32) -> tuple[torch.Tensor, torch.Tensor]:
    """FlexLoRA's download: the best rank-``rank`` factors of ``dW`` for a layer scaled by
    ``scale``. Where ``dW`` has lower rank the spare rows of A are still orthonormal and the
    matching columns of B zero, like a fresh LoRA init."""
    U, S, Vh = torch.linalg.svd(dW.to(torch.float64), full_matrices=False)
    k = min(rank, S.numel())
    A, B = Vh[:k], U[:, :k] * S[:k] / scale
    if k < rank:  # more rank than the layer has dimensions: pad
        A, B = truncate(A, B, 1.0, rank, 1.0)
    return A.to(dtype).contiguous(), B.to(dtype).contiguous()


@dataclass
class HetLoRASum:
    """Streaming HetLoRA average of one layer at ``r_max`` in scaling ``scale``."""

    r_max: int
    scale: float
    weighting: Weighting = "norm"
    _a: torch.Tensor | None = None
    _b: torch.Tensor | None = None
    _w: float = 0.0

    def add(self, A: torch.Tensor, B: torch.Tensor, scale: float, weight: float) -> float:
        """Folds one client's factors in; returns the weight they got."""
        if A.shape[0] > self.r_max:
            raise ValueError(f"rank {A.shape[0]} exceeds r_max {self.r_max}")
        a, b = truncate(A.double(), B.double(), scale, self.r_max, self.scale)
        if self.weighting == "norm":
            weight = float(torch.linalg.matrix_norm(scale * (B.double() @ A.double())))
        if self._a is None:
            self._a, self._b = torch.zeros_like(a), torch.zeros_like(b)
        self._a.add_(a * weight)
        self._b.add_(b * weight)
        self._w += weight
        return weight

    def result(self, dtype: torch.dtype = torch.float32) -> tuple[torch.Tensor, torch.Tensor] | None:
        """The averaged (A, B); None when nothing (or only zero updates) arrived."""
        if self._a is None or self._w <= 0:
            return None
        return (self._a / self._w).to(dtype), (self._b / self._w).to(dtype)


@dataclass
class ProductSum:
    """Streaming ``sum_k w_k s_k B_k A_k / sum_k w_k`` of one layer (FlexLoRA's dW)."""

    _sum: torch.Tensor | None = None
    _w: float = 0.0
    ranks: list[int] = field(default_factory=list)

    def add(self, A: torch.Tensor, B: torch.Tensor, scale: float, weight: float) -> None:
        product = (B.double() @ A.double()) * (scale * weight)
        self._sum = product if self._sum is None else self._sum.add_(product)
        self._w += weight
        self.ranks.append(A.shape[0])

    def result(self) -> torch.Tensor | None:
        return None if self._sum is None or self._w <= 0 else self._sum / self._w


class WeightedSum:
    """The weighted mean ``sum_k w_k T_k / sum_k w_k`` per tensor name.

    By default (adapters: small) a float64 sum divided at the end, as exact as it gets and,
    cast back to the tensors' dtype, the same whatever order updates arrive in (a resumed run
    reproduces a fault-free one bit for bit). ``running=True`` (a full model) keeps a running
    mean ``m += w_k / W_k (T_k - m)`` in each floating tensor's own dtype instead: one model's
    worth of memory, not two (float64) or more. In float32 it rounds each fold to half an ulp
    of the mean plus the rounding of ``w_k / W_k (T_k - m)``, which scales with how far the
    clients differ (their updates), not with the weights' magnitude as a float32 *sum* would;
    identical updates average to themselves exactly; its last bits depend on the fold order.
    Integer tensors are averaged in float64. Updates may be any mapping, read one tensor at a
    time (a lazily decoded upload)."""

    def __init__(self, running: bool = False) -> None:
        self.running = running
        self._acc: dict[str, torch.Tensor] = {}
        self._weights: dict[str, float] = {}
        self._dtypes: dict[str, torch.dtype] = {}
        self._running: set[str] = set()  # names kept as running means
        self.count = 0

    def add(self, tensors: Mapping[str, torch.Tensor], weight: float) -> None:
        if not weight > 0:
            raise ValueError(f"aggregation weight must be positive, got {weight}")
        for name in tensors:
            t = tensors[name].detach()
            acc = self._acc.get(name)
            running = self.running and t.is_floating_point()
            if acc is None:
                self._acc[name] = t.clone() if running else t.to(torch.float64) * weight
                if running:
                    self._running.add(name)
                self._weights[name] = weight
                self._dtypes[name] = t.dtype
            else:
                self._weights[name] += weight
                if running:
                    acc.lerp_(t.to(acc.dtype), weight / self._weights[name])
                else:
                    acc.add_(t.to(torch.float64) * weight)
            del t
        self.count += 1

    def __len__(self) -> int:
        return self.count

    def mean(self) -> dict[str, torch.Tensor]:
        """The weighted mean per name, over the updates that carried that name (a running mean
        is handed over as it is: no copy)."""
        return {n: (a if n in self._running else a / self._weights[n]).to(self._dtypes[n])
                for n, a in self._acc.items()}
