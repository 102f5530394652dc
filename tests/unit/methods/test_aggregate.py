"""Streaming aggregation equals the direct weighted-average formula."""

import pytest
import torch

from fedlora.methods.rules import WeightedSum


def test_weighted_sum_equals_direct_formula():
    g = torch.Generator().manual_seed(0)
    updates = [{"A": torch.randn(4, 16, generator=g), "B": torch.randn(16, 4, generator=g)} for _ in range(5)]
    weights = [10.0, 1.0, 7.0, 3.0, 250.0]
    acc = WeightedSum()
    for u, w in zip(updates, weights):
        acc.add(u, w)
    mean = acc.mean()
    for name in ("A", "B"):
        direct = sum(w * u[name].double() for u, w in zip(updates, weights)) / sum(weights)
        torch.testing.assert_close(mean[name], direct.float(), rtol=0, atol=1e-6)
        assert mean[name].dtype == torch.float32


def test_weighted_sum_keeps_one_running_sum_per_tensor():
    acc = WeightedSum()
    for i in range(100):
        acc.add({"x": torch.full((8,), float(i))}, 1.0)
    assert len(acc._sums) == 1 and len(acc) == 100
    assert acc.mean()["x"][0].item() == pytest.approx(49.5)


def test_non_positive_weight_is_refused():
    with pytest.raises(ValueError, match="positive"):
        WeightedSum().add({"x": torch.ones(1)}, 0.0)
