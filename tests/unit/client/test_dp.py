"""Differential privacy on the client: per-sample clipping, the accountant, the budget."""

from __future__ import annotations

import pytest
import torch
from opacus.accountants import RDPAccountant

from fedlora.client.privacy import BudgetExhausted, PrivacyLedger
from fedlora.client.trainer import train_local
from fedlora.common.config import AdapterConfig
from fedlora.common.data import load_trec
from fedlora.common.model import AdaptedModel, adapter_spec_from_config, load_tokenizer
from fedlora.common.tasks import get_task
from fedlora.proto.v1 import fedlora_pb2 as pb

TASK = get_task("classification")


def _dp(noise=1.0, target=0.0, clip=1.0):
    return pb.DifferentialPrivacy(enabled=True, noise_multiplier=noise, target_epsilon=target,
                                  clip_norm=clip, delta=1e-5)


def test_each_per_sample_gradient_is_clipped(tiny_model, tmp_path):
    """With zero noise and a one-example data set (sampling rate 1: every batch is exactly that
    example), a step's gradient *is* that example's clipped gradient: its norm never exceeds
    the clip norm. Done for 20 examples."""
    am = AdaptedModel(TASK.load_base(str(tiny_model), 6, 0), adapter_spec_from_config(AdapterConfig(rank=4), 0),
                      TASK.peft_task_type)
    am.set_trainable([".*"], [])
    tok = load_tokenizer(str(tiny_model))
    trec = load_trec()
    clip = 1e-3
    ledger = PrivacyLedger(tmp_path / "p.json", 0.0, 1e-5, clip, 0.0, 1.0)
    norms = []
    params = [p for p in am.model.parameters() if p.requires_grad]
    t = pb.LocalTraining(max_steps=1, batch_size=1, learning_rate=0.0, optimizer="sgd")

    def record(opt, *_a, **_k):
        if type(opt) is torch.optim.SGD:  # the inner optimizer: it sees the clipped gradient
            norms.append(torch.sqrt(sum((p.grad.float() ** 2).sum() for p in params)).item())

    from torch.optim.optimizer import register_optimizer_step_pre_hook

    handle = register_optimizer_step_pre_hook(record)
    try:
        for i in range(20):
            train_local(am, trec.subset([i * 97]), tok, t, 32, 0, torch.device("cpu"), ledger, task=TASK)
    finally:
        handle.remove()
    assert len(norms) == 20 and max(norms) <= clip * (1 + 1e-4)
    assert max(norms) > clip * 0.5  # the bound is reached, so clipping really happened


def test_epsilon_grows_with_rounds_and_matches_opacus(tmp_path):
    ledger = PrivacyLedger.open(tmp_path / "p.json", _dp(noise=1.1), n=1000, batch_size=32,
                                steps_per_round=30, rounds=5)
    eps = []
    for _ in range(4):
        ledger.record(30)
        eps.append(ledger.epsilon())
    assert all(a < b for a, b in zip(eps, eps[1:]))
    acc = RDPAccountant()
    for _ in range(4):
        acc.step(noise_multiplier=1.1, sample_rate=32 / 1000)  # one step ...
    acc.history = [(1.1, 32 / 1000, 120)]                       # ... or 120 at once: the same
    assert eps[-1] == pytest.approx(acc.get_epsilon(1e-5), rel=1e-9)


def test_noise_from_target_spends_exactly_the_target(tmp_path):
    ledger = PrivacyLedger.open(tmp_path / "p.json", _dp(noise=0.0, target=3.0), n=2000, batch_size=32,
                                steps_per_round=30, rounds=5)
    for _ in range(5):
        ledger.check(30)
        ledger.record(30)
    assert ledger.epsilon() == pytest.approx(3.0, abs=0.02)
    with pytest.raises(BudgetExhausted, match="privacy budget exhausted"):
        ledger.check(30)


def test_ledger_survives_a_restart(tmp_path):
    a = PrivacyLedger.open(tmp_path / "p.json", _dp(noise=1.0), 500, 16, 10, 3)
    a.record(10)
    b = PrivacyLedger.open(tmp_path / "p.json", _dp(noise=5.0), 500, 16, 10, 3)
    assert b.noise_multiplier == 1.0 and b.epsilon() == a.epsilon()
