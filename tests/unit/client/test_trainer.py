"""Local training knobs the plan carries: FedProx's proximal term, per-step gradient
observers, and the per-block timing profile planners read."""

from __future__ import annotations

import pytest
import torch

from fedlora.methods.legend.profiling import measure_block_seconds, transformer_blocks
from fedlora.client.trainer import train_local
from fedlora.common.config import AdapterConfig
from fedlora.common.data import Dataset
from fedlora.common.model import AdaptedModel, adapter_spec_from_config, load_tokenizer
from fedlora.common.tasks import get_task
from fedlora.proto.v1 import fedlora_pb2 as pb

TASK = get_task("classification")

TEXTS = ["what is the capital of france ?", "who wrote hamlet ?", "how many legs has a spider ?",
         "when did the war end ?"] * 8


@pytest.fixture()
def setup(tiny_model):
    am = AdaptedModel(TASK.load_base(str(tiny_model), 4, 0), adapter_spec_from_config(AdapterConfig(rank=4), 0),
                      TASK.peft_task_type)
    am.set_trainable([".*"], [])
    data = Dataset(TEXTS, [i % 4 for i in range(len(TEXTS))], ["a", "b", "c", "d"])
    return am, data, load_tokenizer(str(tiny_model))


def _drift(am, data, tok, mu: float) -> float:
    start = {n: t.clone() for n, t in am.state().items()}
    t = pb.LocalTraining(epochs=6, batch_size=8, learning_rate=0.1, optimizer="sgd")
    if mu:
        t.regularisation["prox_mu"] = mu
    train_local(am, data, tok, t, 32, 0, torch.device("cpu"), task=TASK)
    return sum(float((am.state()[n] - s).norm()) for n, s in start.items())


def test_proximal_term_holds_the_client_near_the_global_parameters(setup, tiny_model):
    am, data, tok = setup
    free = _drift(am, data, tok, 0.0)
    same = AdaptedModel(TASK.load_base(str(tiny_model), 4, 0), am.spec, TASK.peft_task_type)
    same.set_trainable([".*"], [])
    held = _drift(same, data, tok, 5.0)  # lr * mu = 0.5: a contraction towards the start
    assert held < 0.5 * free


def test_after_backward_sees_every_steps_gradients(setup):
    am, data, tok = setup
    seen = []
    t = pb.LocalTraining(max_steps=3, batch_size=8, learning_rate=0.01)
    train_local(am, data, tok, t, 32, 0, torch.device("cpu"), task=TASK,
                after_backward=lambda: seen.append(all(p.grad is not None for p in am.model.parameters()
                                                       if p.requires_grad)))
    assert seen == [True, True, True]


def test_block_profile_times_every_block_and_leaves_parameters_and_rng_alone(setup):
    am, data, tok = setup
    enc = tok(TEXTS[:8], padding=True, return_tensors="pt")
    before = {n: t.clone() for n, t in am.state().items()}
    rng = torch.get_rng_state()
    prof = measure_block_seconds(am.model, dict(enc), torch.zeros(8, dtype=torch.long), TASK.loss)
    n = len(transformer_blocks(am.model))
    assert n == 2
    assert {f"fwd.{i}" for i in range(n)} | {f"bwd.{i}" for i in range(n)} <= set(prof)
    assert all(prof[k] >= 0 for k in prof) and prof["step"] > 0
    assert all(torch.equal(before[k], v) for k, v in am.state().items())
    assert torch.equal(rng, torch.get_rng_state())


def _causal_round(tiny_llama, checkpointing: bool) -> tuple[dict[str, torch.Tensor], float, set[bool]]:
    task = get_task("causal-lm")
    from fedlora.common.tasks.causal_lm import trec_instructions

    spec = adapter_spec_from_config(AdapterConfig(target_modules=["q_proj", "v_proj"], modules_to_save=[],
                                                  dropout=0.1), seed=0)
    am = AdaptedModel(task.load_base(str(tiny_llama), 0, 0), spec, task.peft_task_type)
    am.set_trainable([r"lora_"], [])
    t = pb.LocalTraining(max_steps=2, batch_size=4, learning_rate=1e-2)
    during: set[bool] = set()
    out = train_local(am, trec_instructions().subset(range(16)), task.load_tokenizer(str(tiny_llama)),
                      t, 64, seed=5, device=torch.device("cpu"), task=task, checkpointing=checkpointing,
                      after_backward=lambda: during.add(am.model.is_gradient_checkpointing))
    assert not am.model.is_gradient_checkpointing  # evaluation gets the plain model back
    return am.state(), out["train_loss"], during


def test_gradient_checkpointing_trains_exactly_as_keeping_activations(tiny_llama):
    """The GPU path's memory saver recomputes activations (dropout replayed): same update."""
    plain, loss, off = _causal_round(tiny_llama, checkpointing=False)
    recomputed, loss_ckpt, on = _causal_round(tiny_llama, checkpointing=True)
    assert off == {False} and on == {True}
    assert loss_ckpt == pytest.approx(loss, rel=1e-6)
    for name, t in plain.items():
        torch.testing.assert_close(recomputed[name], t, rtol=1e-5, atol=1e-7)
