"""CE-LoRA's personalised weights: a softmax of data and parameter similarity per client."""

from __future__ import annotations

import pytest
import torch

from fedlora.common.data import SplitPlan
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


def test_class_stats_noise_is_secret_not_the_round_seeds(tiny_model):
    """The coordinator knows the run seed: noise on the class means drawn from it could be
    subtracted exactly. The same model and data noised twice give different means, and the
    noise has the configured scale."""
    from fedlora.common.model import AdaptedModel
    from fedlora.common.tasks import get_task
    from fedlora.methods.ce_lora.stats import STATS_MEAN, class_stats
    from fedlora.methods import get
    from fedlora.common.config import ServerConfig

    task = get_task("classification")
    split = task.federated_split("trec", SplitPlan(3, alpha=0.5, test_fraction=0.1, seed=0))
    cfg = ServerConfig(model=str(tiny_model), strategy="ce-lora", insecure=True, clients=3)
    am = AdaptedModel(task.load_base(str(tiny_model), 6, 0),
                      get("ce-lora").strategy.adapter_spec(cfg), task.peft_task_type)
    tok = task.load_tokenizer(str(tiny_model))
    data = split.shard(0)
    clean = class_stats(am, tok, data, 6, 32, torch.device("cpu"), 0.0)[STATS_MEAN]
    torch.manual_seed(0)
    a = class_stats(am, tok, data, 6, 32, torch.device("cpu"), 0.5)[STATS_MEAN]
    torch.manual_seed(0)
    b = class_stats(am, tok, data, 6, 32, torch.device("cpu"), 0.5)[STATS_MEAN]
    assert not torch.equal(a, b)
    present = clean.abs().sum(dim=1) > 0
    noise = (a - clean)[present]
    # secret draws, so the bound must hold for any: ~100 values (3 classes x hidden 32) give a
    # sample std within 0.5 +- 0.036 (one sigma); +-0.15 is over 4 sigma (0.4..0.6 failed ~1 in 200)
    assert 0.35 < float(noise.std()) < 0.65


def test_without_classes_the_statistics_are_one_mean_prompt_embedding(tiny_llama):
    """On a causal LM (no classes) the statistics are one group: the base model's last hidden
    state averaged over each example's attended prompt tokens (not its response, not padding),
    then over the examples; the count is the number of examples."""
    from fedlora.common.config import ServerConfig
    from fedlora.common.model import AdaptedModel
    from fedlora.common.tasks import get_task
    from fedlora.methods import get
    from fedlora.methods.ce_lora.stats import STATS_COUNT, STATS_MEAN, class_stats
    from fedlora.common.tasks.causal_lm import encode

    task = get_task("causal-lm")
    cfg = ServerConfig(task="causal-lm", model=str(tiny_llama), strategy="ce-lora", insecure=True,
                       clients=2, adapter={"rank": 4, "alpha": 8})
    base = task.load_base(str(tiny_llama), 0, 0)
    am = AdaptedModel(task.load_base(str(tiny_llama), 0, 0),
                      get("ce-lora").strategy.adapter_spec(cfg), task.peft_task_type)
    tok = task.load_tokenizer(str(tiny_llama))
    data = task.federated_split("trec", SplitPlan(2, alpha=0.5, test_fraction=0.1, seed=0)).shard(0).subset(list(range(5)))
    got = class_stats(am, tok, data, 0, 256, torch.device("cpu"), 0.0, task, "mean")
    expected = []
    with torch.no_grad():
        for j in range(5):
            ids, start = encode(tok, data.prompts[j], data.responses[j], 256)
            hidden = base.model(input_ids=torch.tensor([ids])).last_hidden_state[0]
            expected.append(hidden[:start].double().mean(0))
    assert got[STATS_MEAN].shape == (1, base.config.hidden_size) and got[STATS_COUNT].tolist() == [5.0]
    torch.testing.assert_close(got[STATS_MEAN][0].double(), torch.stack(expected).mean(0),
                               rtol=1e-4, atol=1e-5)


def test_data_stats_by_class_on_a_task_without_classes_is_a_config_error(tiny_llama):
    from pydantic import ValidationError

    from fedlora.common.config import ServerConfig

    with pytest.raises(ValidationError, match="ce_lora.data_stats"):
        ServerConfig(task="causal-lm", model=str(tiny_llama), strategy="ce-lora", insecure=True,
                     clients=2, ce_lora={"data_stats": "classes"})
