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

import pytest
import torch

from fedlora.methods.sa_fedlora.importance import IMPORTANCE_PREFIX
from fedlora.methods.sa_fedlora.strategy import SAFedLoRA
from fedlora.proto.v1 import fedlora_pb2 as pb
from fedlora.server.journal import Journal
from fedlora.server.strategy import ClientInfo
from strategies import build_strategy, seeded_update

ALPHA, R_MAX, BUDGET = 8.0, 4, 8
BETA = 0.85  # methods.md: "smoothed by EMA (beta1=0.85)"; sa_fedlora.round_beta's default
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


@pytest.mark.parametrize("resumed", [False, True], ids=["one-process", "resumed-after-round-1"])
def test_pruning_follows_the_importance_smoothed_across_rounds(tiny_model, tmp_path, resumed):
    """Round 1 (budget kept) scores triplets 0 and 1 of every layer high; round 2 scores 2 and
    3 a little higher than 0 and 1 are then, and pruning follows. The importance is an EMA
    across rounds, AdaLoRA's started at zero: ``I_1 = (1 - beta) s_1``,
    ``I_2 = beta I_1 + (1 - beta) s_2``, so round 1 still decides (triplets 0 and 1 survive),
    where round 2's scores alone would keep 2 and 3. A coordinator restarted after round 1
    (resumed from its journal) prunes the same way."""
    s = _sa(tiny_model, tmp_path, heating_rounds=2)
    s1 = _scores(s, {cid: [1.0, 0.9, 0.0, 0.0] for cid in P})
    s2 = _scores(s, {cid: [0.0, 0.0, 0.2, 0.25] for cid in P})
    _play(s, 1, s1)
    assert sum(s.layer_ranks.values()) == 16  # heating: nothing pruned yet
    if resumed:
        journal = Journal(tmp_path)
        journal.open(s.cfg)
        entry = journal.commit(1, *s.state(), (0, 0))
        s = _sa(tiny_model, tmp_path, heating_rounds=2)
        s.restore(journal.state(entry), entry.meta)
    updates = _play(s, 2, s2)
    smoothed = {p: BETA * (1 - BETA) * s1["a"][p] + (1 - BETA) * s2["a"][p] for p in s.pairs}
    kept = _top(smoothed, BUDGET)
    assert kept != _top({p: s2["a"][p] for p in s.pairs}, BUDGET)
    for path, k in kept.items():
        torch.testing.assert_close(_product(s, path), _kept_product(s, updates, path, k, R_MAX),
                                   rtol=1e-4, atol=1e-6)


def test_a_surviving_triplet_keeps_its_own_smoothed_importance_through_the_svd(tiny_model, tmp_path):
    """Pruning keeps triplets 1 and 2; the SVD that re-factorises them puts the stronger
    (triplet 2: ||B[:, 2]|| ||A[2]|| = 0.03 against 0.01) first. The smoothed importance moves
    with it, so the next pruning judges each new triplet by its own history: ``(1 - beta)``
    times triplet 2's score, then triplet 1's. The factors are orthogonal here, as a layer's
    triplets are right after a re-factorisation, so the SVD's triplets are the kept ones."""
    s = _sa(tiny_model, tmp_path)
    scores = _scores(s, {cid: [0.1, 0.5, 0.4, 0.0] for cid in P})
    strength = torch.tensor([0.04, 0.01, 0.03, 0.02])
    inst = s.configure(1, CLIENTS)
    for c in CLIENTS:
        update = seeded_update(inst[c.id].expected, seed=c.partition)
        for path, (a, b) in s.pairs.items():
            d_in, d_out = s.dims[path]
            update[a] = torch.eye(R_MAX, d_in)
            update[b] = torch.eye(d_out, R_MAX) * strength
        update.update({IMPORTANCE_PREFIX + p: v.float() for p, v in scores[c.id].items()})
        s.fold(1, c, update, float(c.num_examples))
    s.aggregate(1)
    for path in s.pairs:
        torch.testing.assert_close(s.importance[path], (1 - BETA) * scores["a"][path][[2, 1]].double())
        A = s.layer_factors(path, 2)[0]
        assert abs(float(A[0, 2])) == pytest.approx(1.0) and abs(float(A[1, 1])) == pytest.approx(1.0)
