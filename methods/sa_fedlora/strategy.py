"""SA-FedLoRA (arXiv 2405.09394): a proximal initiating stage, then an annealed rank budget.

Initiating: for ``sa_fedlora.initiating_rounds`` rounds the plan carries ``prox_mu``, so
clients train with ``mu/2 ||theta - theta_global||^2`` and drift less.
Annealing (AdaLoRA's mechanics lifted to rounds, our reading, docs/methods.md): every layer
starts at ``adapter.rank``; clients report each LoRA triplet's importance with their update;
after aggregating (same ranks everywhere, so a plain n_k-weighted average of the factors) the
coordinator sums the importances (n_k-weighted), folds that sum into its EMA across rounds
(``sa_fedlora.round_beta``: AdaLoRA smooths the importance over the whole run, not within one
budget step, and a round is our budget step), keeps the top triplets of the next round's
budget (budget.py) by the smoothed importance, drops the rest and re-factorises each layer by
SVD, so the triplets of the next round are singular triplets ``P diag(lambda) Q`` with lambda
folded into B. The next plans carry the per-layer ranks that survived: pruned ranks vanish
from the wire.
"""

from __future__ import annotations

from typing import Any, ClassVar

import torch

from fedlora.proto.v1 import fedlora_pb2 as pb
from fedlora.methods.sa_fedlora.budget import BudgetSchedule, keep_top, prune
from fedlora.methods.sa_fedlora.config import ImportanceOptions
from fedlora.methods.sa_fedlora.importance import IMPORTANCE_PREFIX
from fedlora.methods.rules import redistribute, scaling, truncate
from fedlora.server.strategy import ClientInfo, TensorSpec, split_prefixed
from fedlora.methods.ranked import RankedLoRA, Ranks, rank_summary

SMOOTHED = "importance/"  # journaled smoothed importance, by module path


class SAFedLoRA(RankedLoRA):
    name: ClassVar[str] = "sa-fedlora"

    def __init__(self, cfg, model):
        super().__init__(cfg, model, rule="hetlora")
        self.weighting = "examples"  # equal ranks: the plain FedAvg of the factors
        sa = cfg.sa_fedlora
        n = len(self.pairs)
        b0 = self.r_max * n
        self.schedule = BudgetSchedule(
            b0=b0, b_final=max(1, min(b0, round(sa.final_rank * n))),
            heating_rounds=sa.initiating_rounds + sa.heating_rounds,
            cooling_rounds=sa.cooling_rounds, curve=sa.curve, gamma=sa.gamma)
        self.layer_ranks: Ranks = dict.fromkeys(self.pairs, self.r_max)
        # per layer, one float64 score per current triplet: the EMA across rounds (AdaLoRA's,
        # from zero) of the n_k-weighted importances; absent for a layer not yet scored
        self.importance: dict[str, torch.Tensor] = {}
        self._importance: dict[str, torch.Tensor] = {}  # this round's weighted sums
        self._weight = 0.0

    def state(self) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
        """Besides the adapter (held at r_max, zero-padded): the ranks that survived the
        annealing so far, which the zero padding alone cannot tell apart from zero triplets,
        and the importance smoothed across rounds, which the next pruning reads. The schedule
        is config; the round's own sums are dropped with an unfinished round."""
        tensors, meta = super().state()
        tensors.update({SMOOTHED + path: v for path, v in self.importance.items()})
        meta["layer_ranks"] = dict(self.layer_ranks)
        return tensors, meta

    def restore(self, tensors: dict[str, torch.Tensor], meta: dict[str, Any]) -> None:
        ranks = meta.get("layer_ranks", {})
        if set(ranks) != set(self.pairs):
            raise ValueError("strategy sa-fedlora: the journaled layer ranks do not name this adapter's layers")
        smoothed, rest = split_prefixed(tensors, SMOOTHED)
        for path, v in smoothed.items():
            if path not in ranks or tuple(v.shape) != (int(ranks[path]),):
                raise ValueError(f"strategy sa-fedlora: journaled importance of {path!r} does not "
                                 "match the journaled layer ranks")
        super().restore(rest, meta)
        self.layer_ranks = {path: int(r) for path, r in ranks.items()}
        self.importance = {path: v.to(torch.float64) for path, v in smoothed.items()}

    def ranks_for(self, rnd: int, clients: list[ClientInfo]) -> dict[str, Ranks]:
        return {c.id: dict(self.layer_ranks) for c in clients}

    def extend_plan(self, rnd: int, client: ClientInfo, ranks: Ranks, plan: pb.Plan,
                    expected: dict[str, TensorSpec]) -> None:
        sa = self.cfg.sa_fedlora
        if rnd <= sa.initiating_rounds and sa.prox_mu > 0:
            plan.training.regularisation["prox_mu"] = sa.prox_mu
        ImportanceOptions(beta1=sa.beta1, beta2=sa.beta2).write(plan.options)
        for path, r in ranks.items():
            expected[IMPORTANCE_PREFIX + path] = ((r,), torch.float32)

    def configure(self, rnd, clients):
        self._importance, self._weight = {}, 0.0
        return super().configure(rnd, clients)

    def discard(self, rnd: int) -> None:
        super().discard(rnd)
        self._importance, self._weight = {}, 0.0

    def on_update(self, client: ClientInfo, update: dict[str, torch.Tensor], weight: float) -> None:
        for path in self.layer_ranks:
            s = update.get(IMPORTANCE_PREFIX + path)
            if s is not None:
                acc = self._importance.get(path)
                contrib = s.double() * weight
                self._importance[path] = contrib if acc is None else acc + contrib
        self._weight += weight

    def aggregate(self, rnd: int) -> dict[str, Any]:
        metrics = super().aggregate(rnd)
        self._smooth()
        budget = self.schedule.budget(rnd + 1)
        before = dict(self.layer_ranks)
        if budget < sum(v for v in before.values()):
            scores = {p: self.importance[p].float() for p in before if before[p] > 0 and p in self.importance}
            keep = keep_top(scores, budget, self.cfg.sa_fedlora.min_rank)
            new: dict[str, torch.Tensor] = {}
            for path, kept in keep.items():
                self._refactor(path, before[path], kept, new)
            self.model.load_state(new)
        metrics.update(budget_next=budget, total_rank_next=sum(self.layer_ranks.values()),
                       ranks_next=rank_summary(self.layer_ranks)["ranks"],
                       stage="initiating" if rnd <= self.cfg.sa_fedlora.initiating_rounds else "annealing")
        self._importance, self._weight = {}, 0.0
        return metrics

    def _smooth(self) -> None:
        """Folds this round's n_k-weighted mean importance into the EMA across rounds:
        ``I = round_beta * I + (1 - round_beta) * mean_k s_k`` per triplet, from zero."""
        beta = self.cfg.sa_fedlora.round_beta
        for path, total in self._importance.items():
            seen = total / self._weight
            prev = self.importance.get(path)  # None: the layer's first scores
            self.importance[path] = (1.0 - beta) * seen if prev is None else beta * prev + (1.0 - beta) * seen

    def _refactor(self, path: str, rank: int, kept: list[int], out: dict[str, torch.Tensor]) -> None:
        """Keeps the ``kept`` triplets of a layer and re-factorises them by SVD; the layer is
        stored at r_max (zero-padded) in the coordinator's model.

        The SVD orders the new triplets by strength, so each takes over the smoothed importance
        of the kept triplet of the same strength (``||B[:, i]|| ||A[i]||``): exactly the triplet
        it is when the kept ones are orthogonal, as right after the last re-factorisation (a
        round of training moves them only a little)."""
        A, B = prune(*self.layer_factors(path, rank), kept)
        if path in self.importance:
            strength = B.double().norm(dim=0) * A.double().norm(dim=1)
            order = torch.argsort(strength, descending=True, stable=True)
            self.importance[path] = self.importance[path][torch.as_tensor(kept, dtype=torch.long)][order]
        k = len(kept)
        if k:  # the kept triplets as singular triplets, in the scaling of rank k
            dW = (B.double() @ A.double()) * scaling(self.alpha, rank)
            A, B = redistribute(dW, k, scaling(self.alpha, k))
            rank = k
        a_name, b_name = self.pairs[path]
        out[a_name], out[b_name] = truncate(A, B, scaling(self.alpha, rank), self.r_max,
                                            scaling(self.alpha, self.r_max))
        self.layer_ranks[path] = k
