"""The adapted model both ends build from a plan: names, trainable set, state loading."""

import pytest
import torch

from fedlora.common.config import AdapterConfig
from fedlora.common.model import AdaptedModel, adapter_spec_from_config
from fedlora.common.tasks import get_task
from fedlora.proto.v1 import fedlora_pb2 as pb

TASK = get_task("classification")
load_base = TASK.load_base


@pytest.fixture
def lora(tiny_model):
    return AdaptedModel(load_base(str(tiny_model), 6, 0), adapter_spec_from_config(AdapterConfig(rank=4), 0),
                        TASK.peft_task_type)


def test_state_names_are_peft_adapter_names(lora):
    from peft import get_peft_model_state_dict

    assert set(lora.names()) == set(get_peft_model_state_dict(lora.model))
    assert any(n.endswith("lora_A.weight") for n in lora.names())
    assert "base_model.model.classifier.weight" in lora.names()


def test_same_seed_builds_identical_models(tiny_model, lora):
    other = AdaptedModel(load_base(str(tiny_model), 6, 0), adapter_spec_from_config(AdapterConfig(rank=4), 0),
                         TASK.peft_task_type)
    a, b = lora.state(), other.state()
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_set_trainable_follows_train_and_freeze(lora):
    chosen = lora.set_trainable([".*"], ["lora_A"])
    trainable = {n for n, p in lora.model.named_parameters() if p.requires_grad}
    assert len(trainable) == len(chosen) and not any("lora_A" in n for n in chosen)
    assert any("lora_B" in n for n in chosen)


def test_load_state_refuses_unknown_names_and_shapes(lora):
    name = lora.names()[0]
    with pytest.raises(KeyError, match="not part of this adapter"):
        lora.load_state({"nope": torch.zeros(1)})
    with pytest.raises(ValueError, match="shape"):
        lora.load_state({name: torch.zeros(3, 3, 3)})


def test_load_state_changes_the_model(lora):
    name = [n for n in lora.names() if "lora_B" in n][0]
    new = torch.full_like(lora.state()[name], 0.5)
    lora.load_state({name: new})
    assert torch.equal(lora.state()[name], new)


def test_full_finetuning_ships_every_parameter(tiny_model):
    base = load_base(str(tiny_model), 6, 0)
    n = len(list(base.named_parameters()))
    full = AdaptedModel(base, pb.AdapterSpec(kind="none"), TASK.peft_task_type)
    assert len(full.names()) == n


def test_per_module_ranks_override_the_default(tiny_model):
    spec = adapter_spec_from_config(AdapterConfig(rank=4), 0)
    spec.ranks["bert.encoder.layer.1.attention.self.query"] = 2
    spec.ranks["bert.encoder.layer.0.attention.self.value"] = 6
    am = AdaptedModel(load_base(str(tiny_model), 6, 0), spec, TASK.peft_task_type)
    shapes = {n: s for n, (s, _) in am.shapes().items()}
    assert shapes["base_model.model.bert.encoder.layer.1.attention.self.query.lora_A.weight"][0] == 2
    assert shapes["base_model.model.bert.encoder.layer.0.attention.self.value.lora_A.weight"][0] == 6
    assert not any("layer.0.attention.self.query" in n for n in shapes)  # absent from ranks: no adapter


def test_tri_matrix_adapter_saves_as_plain_lora_with_the_same_outputs(tiny_model, tmp_path):
    from peft import PeftModel

    from fedlora.common.model import load_tokenizer
    from fedlora.methods.ce_lora import tuner

    spec = adapter_spec_from_config(AdapterConfig(rank=4), 0)
    tuner.write_options(spec, b_init_std=0.5)
    am = AdaptedModel(load_base(str(tiny_model), 6, 0), spec, TASK.peft_task_type)
    c_names = [n for n in am.names() if n.endswith(".lora_C")]
    assert len(c_names) == 4 and all(am.shapes()[n][0] == (4, 4) for n in c_names)
    g = torch.Generator().manual_seed(1)
    am.load_state({n: torch.randn(4, 4, generator=g) for n in c_names})
    tok = load_tokenizer(str(tiny_model))
    enc = tok(["what is the capital of france ?", "who wrote it ?"], return_tensors="pt", padding=True)
    am.model.eval()
    with torch.no_grad():
        y = am.model(**enc).logits
    am.save(tmp_path / "a")
    loaded = PeftModel.from_pretrained(load_base(str(tiny_model), 6, 99), str(tmp_path / "a")).eval()
    with torch.no_grad():
        torch.testing.assert_close(loaded(**enc).logits, y, rtol=1e-5, atol=1e-5)


def test_a_full_model_is_saved_a_shard_at_a_time_and_loads_back_whole(tiny_model, tmp_path, monkeypatch):
    """The coordinator's final save of a full model must not copy the model whole (safetensors
    copies what it writes): it writes shards of at most SAVE_SHARD that from_pretrained joins
    (the memory it saves is measured by bench/large_transfer.py)."""
    from transformers import AutoModelForSequenceClassification

    from fedlora.common import model as model_module

    full = AdaptedModel(load_base(str(tiny_model), 6, 0), pb.AdapterSpec(kind="none"), TASK.peft_task_type)
    size = sum(t.numel() * t.element_size() for t in full.state().values())
    monkeypatch.setattr(model_module, "SAVE_SHARD", size // 4)
    full.save(tmp_path / "saved")
    assert len(list((tmp_path / "saved").glob("model-*.safetensors"))) > 1
    back = AutoModelForSequenceClassification.from_pretrained(str(tmp_path / "saved"))
    mine = full.model.state_dict()
    assert all(torch.equal(t, mine[k]) for k, t in back.state_dict().items())
