"""FFA-LoRA under DP-SGD on a causal LM: opacus' per-sample gradients on a peft Llama."""

from __future__ import annotations

import torch

from fedlora.common.data import SplitPlan
from fedlora.common.config import ServerConfig
from fedlora.common.model import AdaptedModel
from fedlora.common.tasks import get_task
from fedlora.methods import get
from fedlora.methods.ffa_lora.strategy import FROZEN

TASK = get_task("causal-lm")


def test_opacus_gives_each_trainable_lora_b_of_a_peft_llama_its_per_example_gradient(tiny_llama):
    """FFA's plan leaves only B trainable (q_proj and v_proj of every decoder layer, nothing
    opacus cannot hook); row i of each ``grad_sample`` is the gradient of row i's loss alone,
    so clipping acts on real per-example gradients despite padding and the causal mask."""
    from opacus import GradSampleModule

    cfg = ServerConfig(task="causal-lm", model=str(tiny_llama), strategy="ffa-lora", insecure=True,
                       clients=2, adapter={"rank": 4, "alpha": 8})
    am = AdaptedModel(TASK.load_base(str(tiny_llama), 0, 0), get("ffa-lora").strategy.adapter_spec(cfg),
                      TASK.peft_task_type)
    chosen = am.set_trainable([".*"], [FROZEN])
    assert sorted(n.split(".layers.")[1] for n in chosen) == [
        f"{i}.self_attn.{m}.lora_B.weight" for i in range(2) for m in ("q_proj", "v_proj")]
    with torch.no_grad():  # B = 0 at start would make every gradient but B's own trivial
        for n in chosen:
            am.parameter(n).normal_(0, 0.1)
    tok = TASK.load_tokenizer(str(tiny_llama))
    rows = TASK.federated_split("trec", SplitPlan(2, alpha=0.5, test_fraction=0.1, seed=0)).shard(0).subset([0, 1, 2])
    enc, targets = next(TASK.batches(rows, tok, 3, 256))
    assert len({int(m.sum()) for m in enc["attention_mask"]}) > 1  # rows of different lengths: padded
    gsm = GradSampleModule(am.model, loss_reduction="mean")  # strict: refuses unsupported layers
    try:
        TASK.loss(gsm(**enc).logits, targets).backward()
        samples = {n: am.parameter(n).grad_sample.clone() for n in chosen}
    finally:
        gsm._close()
    for i in range(3):
        am.model.zero_grad(set_to_none=True)
        one, t = next(TASK.batches(rows.subset([i]), tok, 1, 256))
        TASK.loss(am.model(**one).logits, t).backward()
        for n in chosen:
            assert samples[n].shape == (3, *am.parameter(n).shape)
            torch.testing.assert_close(samples[n][i], am.parameter(n).grad, rtol=1e-4, atol=1e-6)
