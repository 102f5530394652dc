"""The task seam: the registry, and sequence classification behind it computing exactly what
the direct computation does."""

from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F

from fedlora.common.data import SplitPlan
from fedlora.common.evaluate import EvalOptions
from fedlora.common.config import AdapterConfig, ConfigError, ServerConfig, load_config
from fedlora.common.data import Dataset, FederatedSplit, load_trec
from fedlora.common.model import AdaptedModel, adapter_spec_from_config
from fedlora.common.tasks import DEFAULT_TASK, TASKS, get_task
from fedlora.common.tasks.classification import ClassificationTask

TEXTS = ["what is the capital of france ?", "who wrote hamlet ?", "how many legs has a spider ?",
         "when did the war end ?", "what does nasa stand for ?"]
DATA = Dataset(TEXTS, [1, 3, 5, 5, 0], ["ABBR", "DESC", "ENTY", "HUM", "LOC", "NUM"])


@pytest.fixture(scope="module")
def task():
    return get_task("classification")


@pytest.fixture(scope="module")
def model(tiny_model, task):
    am = AdaptedModel(task.load_base(str(tiny_model), 6, 0), adapter_spec_from_config(AdapterConfig(rank=4), 0),
                      task.peft_task_type)
    return am


def test_registry_finds_classification_and_names_the_known_tasks_otherwise():
    assert isinstance(get_task("classification"), ClassificationTask)
    assert get_task(DEFAULT_TASK) is TASKS["classification"]
    assert get_task("classification").peft_task_type == "SEQ_CLS"
    with pytest.raises(ValueError, match=r"unknown task 'nope' \(known: causal-lm, classification\)"):
        get_task("nope")


def test_config_refuses_an_unknown_task_naming_the_field():
    assert load_config(ServerConfig, None, {}).task == "classification"
    with pytest.raises(ConfigError, match=r"^config error: task: unknown task 'seq2seq'"):
        load_config(ServerConfig, None, {"task": "seq2seq"})


def test_batches_are_the_tokenized_rows_in_order_with_their_labels(tiny_model, task):
    tok = task.load_tokenizer(str(tiny_model))
    got = list(task.batches(DATA, tok, 2, 16, [4, 0, 2]))
    assert [len(y) for _, y in got] == [2, 1]
    direct = tok([TEXTS[4], TEXTS[0]], padding=True, truncation=True, max_length=16, return_tensors="pt")
    enc, y = got[0]
    assert set(enc) == set(direct) and all(torch.equal(enc[k], direct[k]) for k in enc)
    assert all(v.shape[0] == len(y) for v in enc.values())  # every tensor is by row: shardable
    assert y.tolist() == [0, 1] and got[1][1].tolist() == [5]


def test_loss_is_the_mean_cross_entropy(task):
    g = torch.Generator().manual_seed(0)
    logits, y = torch.randn(7, 6, generator=g).to(torch.bfloat16), torch.tensor([0, 1, 2, 3, 4, 5, 0])
    loss = task.loss(logits, y)
    assert loss.dtype == torch.float32
    assert torch.equal(loss, F.cross_entropy(logits.float(), y, reduction="sum") / 7)
    torch.testing.assert_close(loss, F.cross_entropy(logits.float(), y))


def test_evaluate_scores_accuracy_and_loss_as_computed_directly(tiny_model, task, model):
    tok = task.load_tokenizer(str(tiny_model))
    model.model.train()
    score = task.evaluate(model.model, tok, DATA, EvalOptions(2, 32), "cpu")
    assert model.model.training  # the mode it found is restored
    model.model.eval()
    with torch.no_grad():
        enc = tok(TEXTS, padding=True, truncation=True, max_length=32, return_tensors="pt")
        logits = model.model(**enc).logits.float()
    y = torch.tensor(DATA.labels)
    assert score.examples == 5
    assert score.accuracy == (logits.argmax(-1) == y).sum().item() / 5
    assert score.loss == pytest.approx(F.cross_entropy(logits, y).item(), rel=1e-5)
    empty = task.evaluate(model.model, tok, DATA.subset([]), EvalOptions(2, 32), "cpu")
    assert empty.examples == 0


def test_builtin_split_is_the_seeded_trec_split_and_nothing_else(task):
    split = task.federated_split("trec", SplitPlan(4, alpha=0.5, test_fraction=0.1, seed=3))
    direct = FederatedSplit.make(load_trec(), SplitPlan(4, alpha=0.5, test_fraction=0.1, seed=3))
    assert (split.test_idx == direct.test_idx).all()
    assert all((a == b).all() for a, b in zip(split.shards, direct.shards))
    assert task.federated_split("data.csv", SplitPlan(4, alpha=0.5, test_fraction=0.1, seed=3)) is None


def test_load_file_reads_the_configured_columns_and_the_runs_labels(tmp_path, task):
    f = tmp_path / "d.jsonl"
    f.write_text("\n".join(json.dumps({"q": t, "y": "NUM"}) for t in TEXTS) + "\n")

    class Cols:
        text_column, label_column = "q", "y"

    data = task.load_file(f, Cols(), DATA.label_names)
    assert data.texts == TEXTS and data.labels == [5] * 5 and data.label_names == DATA.label_names
    assert task.load_file(f, Cols()).label_names == ["NUM"]
    with pytest.raises(ValueError, match="not among the run's"):
        task.load_file(f, Cols(), ["ABBR"])


def test_saved_adapter_declares_the_tasks_peft_type(model, tmp_path):
    model.save(tmp_path / "adapter")
    config = json.loads((tmp_path / "adapter" / "adapter_config.json").read_text())
    assert config["task_type"] == "SEQ_CLS"
