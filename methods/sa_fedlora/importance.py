"""The client's half of SA-FedLoRA's budget: AdaLoRA's importance of each LoRA triplet.

AdaLoRA's ``P diag(lambda) Q`` is represented by plain LoRA factors (A, B) with lambda folded
into B (the coordinator re-factorises by SVD each round, so the triplets are singular
triplets), so the triplet score has no separate lambda term. The EMAs here run over one
round's steps, from zero: a client may sit out rounds and its factors are re-factorised
between them, so element-wise state would not carry over. The coordinator sums the clients'
scores, smooths the sum across rounds per triplet (:mod:`.strategy`) and keeps the top of the
round's budget (:mod:`.budget`).
"""

from __future__ import annotations

import torch

from fedlora.common.model import REPORT_PREFIX

IMPORTANCE_PREFIX = REPORT_PREFIX + "importance."  # + module path: per-triplet scores


class ImportanceEMA:
    """AdaLoRA-style importance of each LoRA triplet, tracked on the client.

    Per element of each factor: ``s = |p * p.grad|``, ``I = b1*I + (1-b1)*s``,
    ``U = b2*U + (1-b2)*|s - I|``, score ``I * U``. Triplet i of a layer scores the mean of
    ``A[i, :]``'s element scores plus the mean of ``B[:, i]``'s. State starts at zero and is
    restarted (at zero) for a factor whose shape changed, e.g. after pruning.
    """

    def __init__(self, beta1: float = 0.85, beta2: float = 0.85) -> None:
        if not 0.0 <= beta1 < 1.0:
            raise ValueError(f"beta1 must be in [0, 1), got {beta1}")
        if not 0.0 <= beta2 < 1.0:
            raise ValueError(f"beta2 must be in [0, 1), got {beta2}")
        self.beta1 = beta1
        self.beta2 = beta2
        # layer -> (I_bar, U_bar) for A, then for B
        self._state: dict[str, tuple[tuple[torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]]] = {}

    def _step(self, p: torch.Tensor, prev: tuple[torch.Tensor, torch.Tensor] | None) -> tuple[torch.Tensor, torch.Tensor]:
        assert p.grad is not None
        s = (p.detach() * p.grad.detach()).abs().float()
        if prev is None or prev[0].shape != s.shape:
            i_bar, u_bar = torch.zeros_like(s), torch.zeros_like(s)
        else:
            i_bar, u_bar = prev
        i_bar = self.beta1 * i_bar + (1.0 - self.beta1) * s
        u_bar = self.beta2 * u_bar + (1.0 - self.beta2) * (s - i_bar).abs()
        return i_bar, u_bar

    @torch.no_grad()
    def update(self, pairs: dict[str, tuple[torch.nn.Parameter, torch.nn.Parameter]]) -> None:
        """Fold in the current gradients: call after backward, before the optimiser step.
        ``pairs[layer] = (A, B)`` with A ``(r, d_in)`` and B ``(d_out, r)``. A layer where
        either factor has no gradient is skipped this time."""
        for name, (a, b) in pairs.items():
            if a.grad is None or b.grad is None:
                continue
            if a.shape[0] != b.shape[1]:
                raise ValueError(f"{name}: A has rank {a.shape[0]} but B has rank {b.shape[1]}")
            prev = self._state.get(name)
            self._state[name] = (
                self._step(a, prev[0] if prev else None),
                self._step(b, prev[1] if prev else None),
            )

    def scores(self) -> dict[str, torch.Tensor]:
        """Per layer seen so far, a float32 CPU vector of length r: the triplet scores."""
        out: dict[str, torch.Tensor] = {}
        for name, ((ia, ua), (ib, ub)) in self._state.items():
            out[name] = ((ia * ua).mean(dim=1) + (ib * ub).mean(dim=0)).float().cpu()
        return out
