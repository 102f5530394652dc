"""LEGEND's aggregated values against methods.md's formulas, computed here with plain torch.

methods.md (LEGEND, [ours]): "Aggregation is per layer over the clients that trained it
(weighted by p_k); different ranks on one layer are combined with the HetLoRA or FlexLoRA
rule". A three-block model and three clients whose profiles give depths 3, 2 and 1 make every
case appear in one round: block 0 is trained by one client (rank 2), block 1 by two at
different ranks (3 and 2), block 2 by all three (rank 4); the classifier head by everyone.
"""

from __future__ import annotations

import pytest
import torch

from fedlora.methods.legend.strategy import Legend
from fedlora.proto.v1 import fedlora_pb2 as pb
from fedlora.server.strategy import ClientInfo
from strategies import build_strategy, seeded_update
from tiny import build_tiny_model

ALPHA, R_MAX = 8.0, 4


def _profile(backward_seconds: float) -> pb.DeviceProfile:
    p = pb.DeviceProfile(memory_bytes=1 << 30)
    p.layer_seconds.update({**{f"bwd.{i}": backward_seconds for i in range(3)}, "batch": 32.0})
    return p


# (client, seconds per block backward, n_k): the slower the device, the shallower its LoRA
CLIENTS = [ClientInfo("deep", 0, 10, _profile(0.3)), ClientInfo("mid", 1, 20, _profile(0.45)),
           ClientInfo("shallow", 2, 30, _profile(1.0))]
BLOCK_RANKS = {"deep": [2, 3, 4], "mid": [0, 2, 4], "shallow": [0, 0, 4]}


@pytest.fixture(scope="module")
def three_blocks(tmp_path_factory):
    return build_tiny_model(tmp_path_factory.mktemp("tiny3") / "model", layers=3)


def _block(path: str) -> int:
    return int(path.split(".layer.")[1].split(".")[0])


def _round(s: Legend) -> tuple[dict[str, dict[str, int]], dict[str, dict[str, torch.Tensor]]]:
    """Round 1 with seeded updates of the planned shapes, weighted n_k: each client's per-layer
    ranks and its update (float64 copies, for the formulas)."""
    inst = s.configure(1, CLIENTS)
    ranks = {c.id: {p: r for p, r in inst[c.id].plan.adapter.ranks.items() if r > 0} for c in CLIENTS}
    for c in CLIENTS:  # the planner's choice is what this module is built on
        assert {p: BLOCK_RANKS[c.id][_block(p)] for p in s.pairs if BLOCK_RANKS[c.id][_block(p)]} == ranks[c.id]
    updates = {}
    for c in CLIENTS:
        update = seeded_update(inst[c.id].expected, seed=c.partition)
        updates[c.id] = {n: t.double() for n, t in update.items()}
        s.fold(1, c, update, float(c.num_examples))
    s.aggregate(1)
    return ranks, updates


def _effective(s: Legend, path: str, rank: int, update: dict[str, torch.Tensor]) -> torch.Tensor:
    """A client's effective update of a layer: ``(alpha / r_k) B_k A_k``."""
    a, b = s.pairs[path]
    return ALPHA / rank * update[b] @ update[a]


def _global_product(s: Legend, path: str) -> torch.Tensor:
    a, b = s.pairs[path]
    state = s.model.state()
    return ALPHA / R_MAX * state[b].double() @ state[a].double()


def _trainers(ranks: dict[str, dict[str, int]], path: str) -> list[ClientInfo]:
    return [c for c in CLIENTS if path in ranks[c.id]]


def test_flexlora_keeps_the_n_k_weighted_mean_product_over_the_layers_trainers(three_blocks, tmp_path):
    """FlexLoRA: ``dW = sum_k p_k (alpha/r_k) B_k A_k``, p_k normalised over the clients that
    trained the layer; the evaluation model holds its best rank-r_max approximation
    (``U[:, :r] S[:r] V[:r]^T``), and the exact dW is kept for the next downloads."""
    s = build_strategy("legend", three_blocks, tmp_path)
    ranks, updates = _round(s)
    for path in s.pairs:
        trainers = _trainers(ranks, path)
        total = sum(c.num_examples for c in trainers)
        dW = sum(c.num_examples / total * _effective(s, path, ranks[c.id][path], updates[c.id]) for c in trainers)
        torch.testing.assert_close(s.products[path], dW)
        U, S, Vh = torch.linalg.svd(dW, full_matrices=False)
        best = U[:, :R_MAX] @ torch.diag(S[:R_MAX]) @ Vh[:R_MAX]
        torch.testing.assert_close(_global_product(s, path), best, rtol=1e-4, atol=1e-6)


def test_a_layer_trained_by_one_client_becomes_that_clients_update_undiluted(three_blocks, tmp_path):
    """Block 0 is adapted by the deep client alone: the global layer is its own effective
    update, not that update times its share of all examples (10 of 60), which is what
    averaging over every client of the round, with zeros for the others, would give."""
    s = build_strategy("legend", three_blocks, tmp_path)
    ranks, updates = _round(s)
    for path in (p for p in s.pairs if _block(p) == 0):
        assert [c.id for c in _trainers(ranks, path)] == ["deep"]
        own = _effective(s, path, 2, updates["deep"])
        torch.testing.assert_close(_global_product(s, path), own, rtol=1e-4, atol=1e-6)


def test_the_classifier_head_is_the_n_k_weighted_mean_over_every_client(three_blocks, tmp_path):
    s = build_strategy("legend", three_blocks, tmp_path)
    _, updates = _round(s)
    total = sum(c.num_examples for c in CLIENTS)
    for name in s.others:
        want = sum(c.num_examples / total * updates[c.id][name] for c in CLIENTS)
        torch.testing.assert_close(s.model.state()[name].double(), want, rtol=1e-5, atol=1e-7)


def test_flexlora_downloads_are_cut_from_the_exact_product_at_each_clients_rank(three_blocks, tmp_path):
    """methods.md, FlexLoRA: client k receives ``B = U[:, :r_k] S[:r_k]``, ``A = V[:r_k]^T``
    rescaled for alpha/r_k, so ``(alpha/r_k) B A`` is dW's best rank-r_k approximation; in
    LEGEND r_k is the client's rank on that layer (2, 3 or 4 on block 1's and 2's layers)."""
    s = build_strategy("legend", three_blocks, tmp_path)
    _round(s)
    inst = s.configure(2, CLIENTS)
    for c in CLIENTS:
        for path, rank in inst[c.id].plan.adapter.ranks.items():
            if rank == 0:
                continue
            a, b = s.pairs[path]
            got = ALPHA / rank * inst[c.id].tensors[b].double() @ inst[c.id].tensors[a].double()
            U, S, Vh = torch.linalg.svd(s.products[path], full_matrices=False)
            torch.testing.assert_close(got, U[:, :rank] @ torch.diag(S[:rank]) @ Vh[:rank], rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("weighting", ["examples", "norm"])
def test_hetlora_pads_and_averages_the_factors_in_one_scaling(three_blocks, tmp_path, weighting):
    """HetLoRA (``ranks.rule: hetlora``): each trainer's A_k, B_k zero-padded to r_max, B_k
    rescaled from alpha/r_k to alpha/r_max, then averaged with weights n_k (``examples``) or
    ``||(alpha/r_k) B_k A_k||_F`` (``norm``, HetLoRA's own; LEGEND's default is ``examples``)
    normalised over the layer's trainers."""
    s = build_strategy("legend", three_blocks, tmp_path, ranks={"rule": "hetlora", "weighting": weighting})
    ranks, updates = _round(s)
    for path in s.pairs:
        a, b = s.pairs[path]
        trainers = _trainers(ranks, path)
        weights = {c.id: float(c.num_examples) if weighting == "examples"
                   else float(torch.linalg.matrix_norm(_effective(s, path, ranks[c.id][path], updates[c.id])))
                   for c in trainers}
        total = sum(weights.values())
        want_a = torch.zeros(R_MAX, s.dims[path][0], dtype=torch.float64)
        want_b = torch.zeros(s.dims[path][1], R_MAX, dtype=torch.float64)
        for c in trainers:
            r = ranks[c.id][path]
            want_a[:r] += weights[c.id] / total * updates[c.id][a]
            want_b[:, :r] += weights[c.id] / total * updates[c.id][b] * (ALPHA / r) / (ALPHA / R_MAX)
        state = s.model.state()
        torch.testing.assert_close(state[a].double(), want_a, rtol=1e-5, atol=1e-7)
        torch.testing.assert_close(state[b].double(), want_b, rtol=1e-5, atol=1e-7)
