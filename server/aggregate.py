"""Streaming weighted sums: updates are folded in as they arrive and then dropped, so the
coordinator holds O(adapter) memory however many clients report."""

from __future__ import annotations

import torch


class WeightedSum:
    """``sum_k w_k T_k`` and ``sum_k w_k`` per tensor name, accumulated in float64."""

    def __init__(self) -> None:
        self._sums: dict[str, torch.Tensor] = {}
        self._weights: dict[str, float] = {}
        self._dtypes: dict[str, torch.dtype] = {}
        self.count = 0

    def add(self, tensors: dict[str, torch.Tensor], weight: float) -> None:
        if not weight > 0:
            raise ValueError(f"aggregation weight must be positive, got {weight}")
        for name, t in tensors.items():
            acc = self._sums.get(name)
            contrib = t.detach().to(torch.float64) * weight
            if acc is None:
                self._sums[name] = contrib
                self._weights[name] = weight
                self._dtypes[name] = t.dtype
            else:
                acc.add_(contrib)
                self._weights[name] += weight
        self.count += 1

    def __len__(self) -> int:
        return self.count

    def mean(self) -> dict[str, torch.Tensor]:
        """The weighted mean per name, over the updates that carried that name."""
        return {n: (s / self._weights[n]).to(self._dtypes[n]) for n, s in self._sums.items()}
