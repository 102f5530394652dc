"""Differential privacy on the client: per-sample clipping, the accountant, the budget."""

from __future__ import annotations

import json
import numpy as np
import pytest
import torch
from opacus.accountants import RDPAccountant

from fedlora.client.privacy import BudgetExhausted, LedgerCorrupt, PrivacyLedger, ledger_path
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
    ledger = PrivacyLedger(tmp_path / "p.json", "run-a", 0.0, 1e-5, clip, 0.0, 1.0)
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
    ledger = PrivacyLedger.open(tmp_path / "p.json", "run-a", _dp(noise=1.1), n=1000, batch_size=32,
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
    ledger = PrivacyLedger.open(tmp_path / "p.json", "run-a", _dp(noise=0.0, target=3.0), n=2000, batch_size=32,
                                steps_per_round=30, rounds=5)
    for _ in range(5):
        ledger.check(30)
        ledger.record(30)
    assert ledger.epsilon() == pytest.approx(3.0, abs=0.02)
    with pytest.raises(BudgetExhausted, match="privacy budget exhausted"):
        ledger.check(30)


def test_a_resumed_run_continues_its_ledger(tmp_path):
    """Same run id (coordinator and client restarted, same state folder): the epsilon goes on
    from what was spent, with the noise fixed when the ledger began."""
    path = ledger_path(tmp_path, "run-a")
    a = PrivacyLedger.open(path, "run-a", _dp(noise=1.0), 500, 16, 10, 3)
    a.record(10)
    b = PrivacyLedger.open(path, "run-a", _dp(noise=5.0), 500, 16, 10, 3)
    assert b.noise_multiplier == 1.0 and b.epsilon() == a.epsilon() > 0


def test_a_new_run_starts_a_fresh_ledger_and_keeps_the_old_one(tmp_path):
    """Another run id: epsilon starts at 0, with this run's own noise and clip; the old run's
    ledger stays on disk, untouched."""
    a = PrivacyLedger.open(ledger_path(tmp_path, "run-a"), "run-a", _dp(noise=1.0, clip=1.0), 500, 16, 10, 3)
    a.record(10)
    kept = a.path.read_bytes()
    b = PrivacyLedger.open(ledger_path(tmp_path, "run-b"), "run-b", _dp(noise=5.0, clip=0.5), 500, 16, 10, 3)
    assert b.epsilon() == 0.0 and b.history == []
    assert (b.noise_multiplier, b.clip_norm) == (5.0, 0.5)
    assert b.path != a.path and a.path.read_bytes() == kept


def test_the_ledger_file_names_its_run(tmp_path):
    """A ledger of another run under this run's name (copied, renamed) is refused, not used."""
    PrivacyLedger.open(tmp_path / "p.json", "run-a", _dp(), 500, 16, 10, 3).record(10)
    with pytest.raises(LedgerCorrupt, match="run_id is 'run-a', not 'run-b'"):
        PrivacyLedger.open(tmp_path / "p.json", "run-b", _dp(), 500, 16, 10, 3)


def _edit(**fields):
    def damage(text: str) -> str:
        return json.dumps({**json.loads(text), **fields})
    return damage


@pytest.mark.parametrize("damage", [
    lambda text: text[: len(text) // 2],          # torn
    lambda text: "",                              # emptied
    _edit(history={"steps": 10}),                 # not a list
    _edit(noise_multiplier=-1.0),
    _edit(history=[[1.0, 16 / 500, -10]]),        # negative steps
    _edit(history=[[0.1, 16 / 500, 10]]),         # steps at a noise the ledger never used
], ids=["torn", "empty", "history-not-a-list", "negative-noise", "negative-steps", "foreign-noise"])
def test_a_damaged_ledger_is_refused_not_reset(tmp_path, damage):
    """Spent budget must not be forgotten: the client stops with an error naming the file, and
    the file is left as it was for the operator."""
    path = ledger_path(tmp_path, "run-a")
    PrivacyLedger.open(path, "run-a", _dp(noise=1.0), 500, 16, 10, 3).record(10)
    path.write_text(damage(path.read_text()))
    broken = path.read_bytes()
    with pytest.raises(LedgerCorrupt, match=f"privacy ledger {path}.*not reset"):
        PrivacyLedger.open(path, "run-a", _dp(noise=1.0), 500, 16, 10, 3)
    assert path.read_bytes() == broken


# --------------------------------------------------------------- randomness: secret vs determined
SEED = 1234  # the round seed: derived from the run seed, which the coordinator knows


def _adapted(tiny_model) -> AdaptedModel:
    am = AdaptedModel(TASK.load_base(str(tiny_model), 6, 0), adapter_spec_from_config(AdapterConfig(rank=4), 0),
                      TASK.peft_task_type)
    am.set_trainable([".*lora_.*", ".*classifier.*"], [])
    return am


def _update(tiny_model, ledger: PrivacyLedger | None, rows: int = 8,
            reseed_each_forward: bool = False) -> dict[str, torch.Tensor]:
    """One local round from the same start (same model, data, plan and round seed); the update.
    ``reseed_each_forward``: something re-seeds torch's global RNG from the round seed before
    every forward pass (so dropout masks are the same in every training)."""
    am = _adapted(tiny_model)
    if reseed_each_forward:
        def reseed(*_) -> None:
            torch.manual_seed(SEED)

        am.model.register_forward_pre_hook(reseed)
    before = {k: v.clone() for k, v in am.state().items()}
    t = pb.LocalTraining(epochs=3, batch_size=rows, learning_rate=0.05, optimizer="sgd")  # 3 steps
    train_local(am, load_trec().subset(list(range(rows))), load_tokenizer(str(tiny_model)), t, 32, SEED,
                torch.device("cpu"), ledger, task=TASK)
    return {k: v - before[k] for k, v in am.state().items()}


def _ledger(tmp_path, noise: float = 1.0, rate: float = 1.0) -> PrivacyLedger:
    return PrivacyLedger(tmp_path / "p.json", "run-a", 0.0, 1e-5, 1.0, noise, rate)


def _same(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_without_dp_the_same_seed_gives_a_byte_identical_update(tiny_model):
    torch.manual_seed(0)
    a = _update(tiny_model, None)
    torch.manual_seed(99)  # whatever the process drew before: the round seed decides
    b = _update(tiny_model, None)
    assert _same(a, b) and any(v.abs().sum() > 0 for v in a.values())


def test_dp_noise_and_sample_do_not_follow_the_round_or_global_seeds(tiny_model, tmp_path):
    """Two clients, or one round redone, with the same run seed, model, data and plan, even
    with torch's and numpy's global RNGs seeded alike: the updates differ (noise and Poisson
    sample are secret)."""
    updates = []
    for _ in range(2):
        torch.manual_seed(0)
        np.random.seed(0)
        updates.append(_update(tiny_model, _ledger(tmp_path, rate=0.5)))
    assert not _same(*updates)


def test_dp_noise_is_not_drawn_from_torchs_global_rng(tiny_model, tmp_path):
    """The noise has its own secret generator: code that re-seeds torch's global RNG from the
    run seed while training (a method's hook, a library) does not make it predictable. The
    sampling rate is 1, so every batch is the whole data set and only the noise can differ."""
    a = _update(tiny_model, _ledger(tmp_path), reseed_each_forward=True)
    b = _update(tiny_model, _ledger(tmp_path), reseed_each_forward=True)
    assert not _same(a, b)


def test_dp_noise_has_the_planned_scale(tiny_model, tmp_path):
    """With a clip norm near zero and large noise the update is the noise alone (times the learning rate over
    the expected batch): its spread is noise x clip, whatever generator draws it."""
    ledger = PrivacyLedger(tmp_path / "p.json", "run-a", 0.0, 1e-5, 1e-6, 1e4, 1.0)
    update = _update(tiny_model, ledger)
    flat = torch.cat([v.flatten() for v in update.values()])
    # 3 SGD steps of lr 0.05, each noise N(0, (1e4 x 1e-6)^2) over the expected batch of 8
    assert flat.std().item() == pytest.approx(0.05 * 3 ** 0.5 * 1e-2 / 8, rel=0.1)
