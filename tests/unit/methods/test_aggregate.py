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
    assert len(acc._acc) == 1 and len(acc) == 100
    assert acc.mean()["x"][0].item() == pytest.approx(49.5)


def test_non_positive_weight_is_refused():
    with pytest.raises(ValueError, match="positive"):
        WeightedSum().add({"x": torch.ones(1)}, 0.0)


def test_running_mean_in_the_tensors_own_dtype_stays_float32_and_close_to_float64():
    """``running=True`` (full FedAvg): one float32 running mean, within a few ulps of the float64
    weighted mean of the same updates."""
    g = torch.Generator().manual_seed(1)
    base = torch.randn(64, 64, generator=g) * 3
    updates = [base + 1e-3 * torch.randn(64, 64, generator=g) for _ in range(7)]
    weights = [5.0, 1.0, 20.0, 3.0, 3.0, 100.0, 2.0]
    acc = WeightedSum(running=True)
    for u, w in zip(updates, weights):
        acc.add({"w": u}, w)
    mean = acc.mean()["w"]
    direct = sum(w * u.double() for u, w in zip(updates, weights)) / sum(weights)
    assert mean.dtype == torch.float32 and acc._acc["w"].dtype == torch.float32
    ulp = torch.finfo(torch.float32).eps * direct.abs().max().item()
    assert (mean.double() - direct).abs().max().item() <= 4 * ulp


def test_identical_updates_average_to_themselves_exactly_in_float32():
    t = torch.randn(100, generator=torch.Generator().manual_seed(2))
    acc = WeightedSum(running=True)
    for w in (3.0, 1.0, 7.0):
        acc.add({"t": t}, w)
    assert torch.equal(acc.mean()["t"], t)


def test_the_float64_sum_gives_the_same_bits_whatever_the_fold_order():
    """Adapters' mean is order-independent: a resumed run, whose clients report in another
    order, ends with the fault-free run's adapter bit for bit."""
    g = torch.Generator().manual_seed(3)
    updates = [(torch.randn(256, generator=g), w) for w in (5.0, 1.0, 20.0, 3.0)]
    means = []
    for order in ([0, 1, 2, 3], [3, 1, 0, 2], [2, 3, 1, 0]):
        acc = WeightedSum()
        for i in order:
            acc.add({"t": updates[i][0]}, updates[i][1])
        means.append(acc.mean()["t"])
    assert all(torch.equal(m, means[0]) for m in means)


def test_fedavg_keeps_a_running_mean_only_for_a_full_model(tiny_model):
    from fedlora import methods
    from fedlora.common.config import ServerConfig, load_config
    from fedlora.common.model import AdaptedModel
    from fedlora.common.tasks import get_task

    task = get_task("classification")
    for name, running in (("fedavg", True), ("fedavg-lora", False)):
        cls = methods.get(name).strategy
        cfg = load_config(ServerConfig, None, {"strategy": name, "model": str(tiny_model)})
        s = cls(cfg, AdaptedModel(task.load_base(str(tiny_model), 6, 0), cls.adapter_spec(cfg),
                                  task.peft_task_type))
        s.configure(1, [])
        assert s._sum.running is running
