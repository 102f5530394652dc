"""Heterogeneous-rank aggregation (HetLoRA, FlexLoRA) against the direct formulas, with the
alpha/r scaling kept consistent when ranks differ."""

from __future__ import annotations

import pytest
import torch

from fedlora.common.model import lora_pairs
from fedlora.methods.rules import HetLoRASum, ProductSum, redistribute, scaling, truncate

ALPHA, R_MAX, D_IN, D_OUT = 16.0, 8, 12, 10


def _client(rank: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(rank, D_IN, generator=g, dtype=torch.float64), torch.randn(D_OUT, rank, generator=g, dtype=torch.float64)


CLIENTS = [(2, 0, 100.0), (4, 1, 300.0), (8, 2, 50.0)]  # (rank, seed, n_k)


def _pad(A, B, r):
    return (torch.cat([A, A.new_zeros(r - A.shape[0], A.shape[1])]),
            torch.cat([B, B.new_zeros(B.shape[0], r - B.shape[1])], dim=1))


def test_hetlora_is_the_weighted_mean_of_padded_factors_in_one_scaling():
    acc = HetLoRASum(R_MAX, scaling(ALPHA, R_MAX), weighting="examples")
    want_a, want_b, total = 0, 0, sum(n for *_, n in CLIENTS)
    for r, seed, n in CLIENTS:
        A, B = _client(r, seed)
        acc.add(A, B, scaling(ALPHA, r), n)
        pa, pb = _pad(A, B * (ALPHA / r) / (ALPHA / R_MAX), R_MAX)
        want_a, want_b = want_a + n / total * pa, want_b + n / total * pb
    A, B = acc.result(torch.float64)
    torch.testing.assert_close(A, want_a)
    torch.testing.assert_close(B, want_b)


def test_hetlora_norm_weighting_uses_the_frobenius_norm_of_each_effective_update():
    acc = HetLoRASum(R_MAX, scaling(ALPHA, R_MAX), weighting="norm")
    weights = []
    for r, seed, n in CLIENTS:
        A, B = _client(r, seed)
        weights.append(acc.add(A, B, scaling(ALPHA, r), n))
        assert weights[-1] == pytest.approx(float(torch.linalg.matrix_norm(ALPHA / r * B @ A)))
    assert acc._w == pytest.approx(sum(weights))


def test_padding_then_truncating_keeps_the_effective_update_of_a_low_rank_client():
    A, B = _client(4, 7)
    pa, pb = truncate(A, B, scaling(ALPHA, 4), R_MAX, scaling(ALPHA, R_MAX))
    torch.testing.assert_close(scaling(ALPHA, R_MAX) * pb @ pa, scaling(ALPHA, 4) * B @ A)
    ta, tb = truncate(pa, pb, scaling(ALPHA, R_MAX), 4, scaling(ALPHA, 4))
    torch.testing.assert_close(ta, A)
    torch.testing.assert_close(tb, B)


def test_flexlora_sums_the_weighted_scaled_products():
    acc = ProductSum()
    want, total = 0, sum(n for *_, n in CLIENTS)
    for r, seed, n in CLIENTS:
        A, B = _client(r, seed)
        acc.add(A, B, scaling(ALPHA, r), n)
        want = want + n / total * (ALPHA / r) * B @ A
    torch.testing.assert_close(acc.result(), want)
    assert acc.ranks == [2, 4, 8]


def test_flexlora_redistributes_the_best_rank_r_approximation_at_each_clients_scaling():
    dW = torch.randn(D_OUT, D_IN, dtype=torch.float64, generator=torch.Generator().manual_seed(3))
    U, S, Vh = torch.linalg.svd(dW, full_matrices=False)
    for r in (2, 4, 8):
        A, B = redistribute(dW, r, scaling(ALPHA, r), torch.float64)
        assert A.shape == (r, D_IN) and B.shape == (D_OUT, r)
        torch.testing.assert_close(scaling(ALPHA, r) * B @ A, U[:, :r] @ torch.diag(S[:r]) @ Vh[:r])
        torch.testing.assert_close(A @ A.T, torch.eye(r, dtype=torch.float64))  # rows orthonormal


def test_flexlora_with_one_client_returns_that_clients_product():
    A, B = _client(4, 11)
    acc = ProductSum()
    acc.add(A, B, scaling(ALPHA, 4), 42.0)
    A2, B2 = redistribute(acc.result(), 4, scaling(ALPHA, 4), torch.float64)
    torch.testing.assert_close(B2 @ A2, B @ A)


def test_lora_pairs_maps_peft_wire_names_to_module_paths():
    names = ["base_model.model.bert.encoder.layer.0.attention.self.query.lora_A.weight",
             "base_model.model.bert.encoder.layer.0.attention.self.query.lora_B.weight",
             "base_model.model.classifier.weight"]
    assert lora_pairs(names) == {"bert.encoder.layer.0.attention.self.query": (names[0], names[1])}
