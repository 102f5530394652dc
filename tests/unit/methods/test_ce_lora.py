"""CE-LoRA's personalised weights: a softmax of data and parameter similarity per client."""

from __future__ import annotations

import pytest
import torch

from fedlora.methods.ce_lora.strategy import data_similarity, personal_weights


def _stats(seed, skew):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(3, 8, generator=g), torch.tensor(skew, dtype=torch.float32)


def test_weights_are_a_softmax_per_client_and_sum_to_one():
    cs = {k: {"l.lora_C": torch.eye(2) + 0.1 * i} for i, k in enumerate("abc")}
    stats = {k: _stats(i, [5.0, 1.0, 0.0]) for i, k in enumerate("abc")}
    w = personal_weights(stats, cs, lam=0.5, tau=0.2)
    for k, row in w.items():
        assert set(row) == set(cs) and sum(row.values()) == pytest.approx(1.0)
        assert row[k] == max(row.values())  # a client is most similar to itself


def test_identical_data_is_fully_similar_and_disjoint_classes_not_at_all():
    mean, count = _stats(0, [3.0, 2.0, 0.0])
    assert data_similarity(mean, count, mean, count) == pytest.approx(1.0)
    assert data_similarity(mean, count, mean, torch.tensor([0.0, 0.0, 4.0])) == 0.0
