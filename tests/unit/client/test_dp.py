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
from fedlora.common.data import Dataset, load_trec
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


def _per_example_gradients(am: AdaptedModel, data, tok) -> list[torch.Tensor]:
    """Each example's own loss gradient over the trainable tensors, flattened (one forward and
    backward per example, no opacus): the g_i that DP-SGD must clip one by one."""
    params = [p for p in am.model.parameters() if p.requires_grad]
    out = []
    for i in range(len(data)):
        enc, targets = next(TASK.batches(data, tok, 1, 32, [i]))
        grads = torch.autograd.grad(TASK.loss(am.model(**enc).logits, targets), params)
        out.append(torch.cat([g.flatten() for g in grads]))
    return out


def test_a_batch_is_clipped_example_by_example_not_as_a_whole(tiny_model, tmp_path):
    """DP-SGD's guarantee rests on bounding each example's influence: with zero noise, one step
    over a batch of 6 must apply ``sum_i g_i min(1, C / ||g_i||) / 6``, not the batch gradient
    clipped once. A confident head (class 0's bias +4) makes the examples labelled 0 nearly
    right (small gradients, left as they are) and the others wrong (gradients ~15x larger,
    clipped), so the two clippings land far apart. Dropout is off so each g_i is one number."""
    am = _adapted(tiny_model)
    for m in am.model.modules():
        if isinstance(m, torch.nn.Dropout):
            m.p = 0.0
    bias = next(n for n in am.state() if n.endswith("classifier.bias"))
    am.load_state({bias: torch.tensor([4.0, 0, 0, 0, 0, 0])})
    tok, trec = load_tokenizer(str(tiny_model)), load_trec()
    data = Dataset(trec.texts[:6], [0, 0, 0, 3, 4, 5], trec.label_names)
    g = _per_example_gradients(am, data, tok)
    norms = torch.stack([gi.norm() for gi in g])
    clip = float((norms.min() * norms.max()).sqrt())  # between the two groups: 3 clipped, 3 not
    assert norms.max() > 5 * norms.min() and (norms < clip).sum() == 3
    per_example = sum(gi * min(1.0, clip / gi.norm().item()) for gi in g) / len(g)
    mean = sum(g) / len(g)
    per_batch = mean * min(1.0, clip / mean.norm().item())
    assert (per_example - per_batch).norm() > 0.1 * per_example.norm()  # the test can tell them apart

    seen: list[torch.Tensor] = []
    params = [p for p in am.model.parameters() if p.requires_grad]

    def record(opt, *_a, **_k):
        if type(opt) is torch.optim.SGD:  # the inner optimizer: it sees the clipped gradient
            seen.append(torch.cat([p.grad.flatten() for p in params]))

    from torch.optim.optimizer import register_optimizer_step_pre_hook

    handle = register_optimizer_step_pre_hook(record)
    try:  # sampling rate 1: the one batch is all 6 examples; noise multiplier 0
        train_local(am, data, tok, pb.LocalTraining(max_steps=1, batch_size=6, learning_rate=0.0, optimizer="sgd"),
                    32, 0, torch.device("cpu"), PrivacyLedger(tmp_path / "p.json", "run-a", 0.0, 1e-5, clip, 0.0, 1.0),
                    task=TASK)
    finally:
        handle.remove()
    assert len(seen) == 1
    torch.testing.assert_close(seen[0], per_example, rtol=1e-4, atol=1e-6)


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
