"""SA-FedLoRA's aggregated values against methods.md's formulas, computed here with plain torch.

methods.md (SA-FedLoRA, [ours]): clients report each triplet's importance with their update,
"the coordinator sums them (weighted by p_k), keeps the top-b triplets of the round's budget
b(t) and sends the resulting per-layer ranks in the next plan"; the importance is AdaLoRA's,
"smoothed by EMA (beta1=0.85)", AdaLoRA's mechanics "lifted to rounds". The factors of equal
ranks are averaged with weights n_k (docs/methods.md). The tiny model has four adapted layers
at rank 4 (16 triplets); the budget after pruning is 8. Importance scores are hand-built so
the expected choice is plain to read; the factors are seeded random.
"""

from __future__ import annotations

import torch

from fedlora.methods.sa_fedlora.importance import IMPORTANCE_PREFIX
from fedlora.methods.sa_fedlora.strategy import SAFedLoRA
from fedlora.proto.v1 import fedlora_pb2 as pb
from fedlora.server.strategy import ClientInfo
from strategies import build_strategy, seeded_update

ALPHA, R_MAX, BUDGET = 8.0, 4, 8
CLIENTS = [ClientInfo("a", 0, 10, pb.DeviceProfile()), ClientInfo("b", 1, 30, pb.DeviceProfile())]
P = {c.id: c.num_examples / sum(d.num_examples for d in CLIENTS) for c in CLIENTS}

Scores = dict[str, dict[str, torch.Tensor]]  # client -> layer -> one score per triplet


def _sa(model, tmp_path, **sa) -> SAFedLoRA:
    return build_strategy("sa-fedlora", model, tmp_path, sa_fedlora={
        "initiating_rounds": 0, "heating_rounds": 0, "cooling_rounds": 1, "final_rank": 2.0, **sa})


def _scores(s: SAFedLoRA, per_client: dict[str, list[float]]) -> Scores:
    """The same pattern on every layer, scaled up a little layer by layer (1, 1.05, ...) so no
    two layers tie."""
    return {cid: {p: torch.tensor(v) * (1 + j / 20) for j, p in enumerate(sorted(s.pairs))}
            for cid, v in per_client.items()}


def _play(s: SAFedLoRA, rnd: int, scores: Scores) -> dict[str, dict[str, torch.Tensor]]:
    """One round: seeded factors and head, the given importance scores, weights n_k; returns the
    updates (float64 copies) for the formulas."""
    inst = s.configure(rnd, CLIENTS)
    out = {}
    for c in CLIENTS:
        update = seeded_update(inst[c.id].expected, seed=10 * rnd + c.partition)
        update.update({IMPORTANCE_PREFIX + p: v.float() for p, v in scores[c.id].items()})
        out[c.id] = {n: t.double() for n, t in update.items()}
        s.fold(rnd, c, update, float(c.num_examples))
    s.aggregate(rnd)
    return out


def _mean(updates, name: str) -> torch.Tensor:
    return sum(P[cid] * u[name] for cid, u in updates.items())


def _top(score: dict[str, torch.Tensor], budget: int) -> dict[str, list[int]]:
    """The ``budget`` best triplets over all layers (methods.md's top-b), per layer."""
    paths = sorted(score)
    flat = torch.cat([score[p] for p in paths])
    best = set(torch.topk(flat, budget).indices.tolist())
    r = len(score[paths[0]])
    return {p: [i for i in range(r) if j * r + i in best] for j, p in enumerate(paths)}


def _product(s: SAFedLoRA, path: str) -> torch.Tensor:
    a, b = s.pairs[path]
    state = s.model.state()
    return ALPHA / R_MAX * state[b].double() @ state[a].double()


def _kept_product(s: SAFedLoRA, updates, path: str, kept: list[int], rank: int) -> torch.Tensor:
    """``(alpha/r) sum_{i in kept} B[:, i] A[i]`` of the round's n_k-weighted mean factors."""
    a, b = s.pairs[path]
    return ALPHA / rank * _mean(updates, b)[:, kept] @ _mean(updates, a)[kept]


def test_pruning_keeps_the_top_budget_of_the_p_k_weighted_importance(tiny_model, tmp_path):
    """After round 1 the budget falls from 16 to 8: the kept triplets are the 8 best of
    ``sum_k p_k s_k`` over all layers (here triplets 1 and 2 of every layer; the unweighted
    mean would keep 0 and 2), and each layer's global product is the averaged factors'
    product over its kept triplets, re-factorised without change."""
    s = _sa(tiny_model, tmp_path)
    scores = _scores(s, {"a": [0.9, 0.0, 0.5, 0.0], "b": [0.0, 0.4, 0.3, 0.0]})
    updates = _play(s, 1, scores)
    weighted = {p: sum(P[cid] * scores[cid][p] for cid in scores) for p in s.pairs}
    kept = _top(weighted, BUDGET)
    assert kept != _top({p: sum(scores[cid][p] for cid in scores) for p in s.pairs}, BUDGET)
    assert s.layer_ranks == {p: len(k) for p, k in kept.items()}
    for path, k in kept.items():
        torch.testing.assert_close(_product(s, path), _kept_product(s, updates, path, k, R_MAX),
                                   rtol=1e-4, atol=1e-6)


def test_the_next_download_holds_the_kept_triplets_as_singular_triplets(tiny_model, tmp_path):
    """The pruned layer travels at its new rank r: ``(alpha/r) B A`` is the kept product and
    the rows of A are orthonormal (``P diag(lambda) Q`` with lambda folded into B)."""
    s = _sa(tiny_model, tmp_path)
    scores = _scores(s, {"a": [0.9, 0.0, 0.5, 0.0], "b": [0.0, 0.4, 0.3, 0.0]})
    updates = _play(s, 1, scores)
    kept = _top({p: sum(P[cid] * scores[cid][p] for cid in scores) for p in s.pairs}, BUDGET)
    inst = s.configure(2, CLIENTS)
    for c in CLIENTS:
        for path, k in kept.items():
            a, b = s.pairs[path]
            A, B = inst[c.id].tensors[a].double(), inst[c.id].tensors[b].double()
            assert A.shape[0] == len(k) == inst[c.id].plan.adapter.ranks[path]
            torch.testing.assert_close(ALPHA / len(k) * B @ A, _kept_product(s, updates, path, k, R_MAX),
                                       rtol=1e-4, atol=1e-6)
            torch.testing.assert_close(A @ A.T, torch.eye(len(k), dtype=torch.float64), rtol=0, atol=1e-5)


def test_pruned_layers_average_their_factors_in_their_own_scaling(tiny_model, tmp_path):
    """Round 2 trains at rank 2 (scaling alpha/2) and the budget stays at 8: the global layer
    is the n_k-weighted mean of the factors, ``(alpha/2) mean(B) mean(A)``, though the
    coordinator stores it at r_max = 4 (scaling alpha/4), zero-padded. The head is the
    n_k-weighted mean too."""
    s = _sa(tiny_model, tmp_path)
    _play(s, 1, _scores(s, {"a": [0.9, 0.0, 0.5, 0.0], "b": [0.0, 0.4, 0.3, 0.0]}))
    updates = _play(s, 2, _scores(s, {"a": [1.0, 2.0], "b": [2.0, 1.0]}))
    assert set(s.layer_ranks.values()) == {2}
    for path in s.pairs:
        torch.testing.assert_close(_product(s, path), _kept_product(s, updates, path, [0, 1], 2),
                                   rtol=1e-4, atol=1e-6)
    for name in s.others:
        torch.testing.assert_close(s.model.state()[name].double(), _mean(updates, name), rtol=1e-5, atol=1e-7)

