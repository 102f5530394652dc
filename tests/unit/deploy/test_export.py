"""``fedlora export``'s pieces on run folders laid out as the coordinator writes them (a real PEFT
adapter with non-zero LoRA B, the tokenizer, fedlora.json, summary.json): what is refused, and
that the merged folder stands alone and reproduces base + adapter."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from fedlora.deploy.export import GGUF_FILE, GGUF_RELATIVE_TOLERANCE, export
from fedlora.deploy.runs import finished_run

TEXT = "<|im_start|>user\nWho was Galileo?<|im_end|>\n<|im_start|>assistant\n"


def make_run(folder: Path, base: Path, task: str, peft_type: str | None, status: str = "complete",
             targets=("q_proj", "v_proj"), num_labels: int = 0, modules_to_save=None) -> Path:
    """A run folder as server/app.py leaves it; ``peft_type`` None: full fine-tuning (a whole
    model in adapter/)."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from fedlora.common.tasks import get_task

    adapter = folder / "adapter"
    torch.manual_seed(0)
    if task == "causal-lm":
        model = get_task(task).load_base(str(base), 0, 0)  # a folder or a .gguf file
        tokenizer = get_task(task).load_tokenizer(str(base))
    else:
        tokenizer = AutoTokenizer.from_pretrained(str(base))
        model = AutoModelForSequenceClassification.from_pretrained(str(base), num_labels=num_labels)
    if peft_type is None:
        with torch.no_grad():
            model.model.embed_tokens.weight.mul_(1.5)
        model.save_pretrained(str(adapter), safe_serialization=True)
    else:
        # init_lora_weights=False: B is random too, so merging changes the weights
        model = get_peft_model(model, LoraConfig(task_type=peft_type, r=4, lora_alpha=8,
                                                 target_modules=list(targets), init_lora_weights=False,
                                                 modules_to_save=modules_to_save))
        model.save_pretrained(str(adapter))
    tokenizer.save_pretrained(str(adapter))
    (adapter / "fedlora.json").write_text(json.dumps(
        {"base_model": str(base), "task": task, "num_labels": num_labels, "seed": 0,
         "label_names": [f"L{i}" for i in range(num_labels)], "strategy": "test"}))
    (folder / "summary.json").write_text(json.dumps({"status": status}))
    return folder


def _logits(model, tokenizer, text=TEXT, special=False):
    with torch.no_grad():
        return model(**tokenizer(text, add_special_tokens=special, return_tensors="pt")).logits


@pytest.fixture(scope="module")
def lora_run(tmp_path_factory, tiny_llama):
    return make_run(tmp_path_factory.mktemp("lora") / "run", tiny_llama, "causal-lm", "CAUSAL_LM")


@pytest.fixture(scope="module")
def exported(lora_run, tmp_path_factory):
    out = tmp_path_factory.mktemp("export") / "merged"
    return export(lora_run, out), out


def test_a_missing_folder_is_refused(tmp_path):
    with pytest.raises(FileNotFoundError, match="not found"):
        finished_run(tmp_path / "nope")


def test_a_run_without_summary_has_not_finished(tmp_path):
    (tmp_path / "adapter").mkdir()
    with pytest.raises(ValueError, match="has not finished"):
        finished_run(tmp_path)


def test_a_failed_run_is_refused(tmp_path, tiny_llama):
    make_run(tmp_path, tiny_llama, "causal-lm", "CAUSAL_LM", status="failed")
    with pytest.raises(ValueError, match="did not complete"):
        finished_run(tmp_path)


def test_a_run_without_a_final_model_is_refused(tmp_path):
    (tmp_path / "summary.json").write_text(json.dumps({"status": "complete"}))
    with pytest.raises(FileNotFoundError, match="no final model"):
        finished_run(tmp_path)


def test_merged_folder_loads_alone_and_gives_base_plus_adapter_logits(exported, lora_run, tiny_llama):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    rep, out = exported
    assert not (out / "adapter_config.json").exists() and (out / "model.safetensors").is_file()
    assert "quantization_config" not in json.loads((out / "config.json").read_text())
    merged = AutoModelForCausalLM.from_pretrained(str(out), dtype=torch.float32)
    tok = AutoTokenizer.from_pretrained(str(out))
    adapted = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(str(tiny_llama)),
                                        str(lora_run / "adapter"))
    base = AutoModelForCausalLM.from_pretrained(str(tiny_llama))
    want = _logits(adapted, tok)
    assert (want - _logits(base, tok)).abs().max() > 1e-3  # the adapter does change the model
    assert torch.allclose(_logits(merged, tok), want, atol=1e-5)
    assert rep.merge_diff <= 1e-5


def test_merged_folder_has_generation_config_and_tokenizer(exported):
    from transformers import AutoTokenizer, GenerationConfig

    _, out = exported
    gen = GenerationConfig.from_pretrained(str(out))
    tok = AutoTokenizer.from_pretrained(str(out))
    assert gen.eos_token_id == tok.eos_token_id and gen.pad_token_id == tok.pad_token_id
    assert tok.chat_template and json.loads((out / "config.json").read_text())["use_cache"] is True


def test_gguf_is_written_and_checked_against_the_merged_model(exported):
    rep, out = exported
    assert rep.gguf == out / GGUF_FILE and rep.gguf.is_file()
    assert 0 < rep.gguf_diff < GGUF_RELATIVE_TOLERANCE * max(1.0, rep.gguf_scale)
    assert not (out / ".gguf-check").exists()


def test_an_existing_output_is_kept_unless_forced(lora_run, tmp_path):
    (tmp_path / "keep.txt").write_text("x")
    with pytest.raises(FileExistsError, match="--force"):
        export(lora_run, tmp_path, gguf=False)
    export(lora_run, tmp_path, gguf=False, force=True)
    assert not (tmp_path / "keep.txt").exists() and not (tmp_path / GGUF_FILE).exists()


def test_a_full_fine_tuning_run_is_resaved_as_the_merged_folder(tmp_path, tiny_llama):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    run = make_run(tmp_path / "run", tiny_llama, "causal-lm", None)
    export(run, tmp_path / "out", gguf=False)
    tok = AutoTokenizer.from_pretrained(str(tmp_path / "out"))
    trained = AutoModelForCausalLM.from_pretrained(str(run / "adapter"))
    merged = AutoModelForCausalLM.from_pretrained(str(tmp_path / "out"))
    assert torch.equal(_logits(merged, tok), _logits(trained, tok))


def test_a_classification_run_merges_into_a_sequence_classifier(tmp_path, tiny_model):
    from peft import PeftModel
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    run = make_run(tmp_path / "run", tiny_model, "classification", "SEQ_CLS", targets=("query", "value"),
                   num_labels=3, modules_to_save=["classifier"])
    rep = export(run, tmp_path / "out")
    assert rep.gguf is None and "causal" in rep.gguf_skipped
    merged = AutoModelForSequenceClassification.from_pretrained(str(tmp_path / "out"))
    assert merged.config.id2label == {0: "L0", 1: "L1", 2: "L2"}
    torch.manual_seed(0)
    base = AutoModelForSequenceClassification.from_pretrained(str(tiny_model), num_labels=3)
    adapted = PeftModel.from_pretrained(base, str(run / "adapter")).eval()
    tok = AutoTokenizer.from_pretrained(str(tmp_path / "out"))
    assert torch.allclose(_logits(merged.eval(), tok, "who was galileo?", True),
                          _logits(adapted, tok, "who was galileo?", True), atol=1e-5)


def test_a_run_on_a_gguf_base_exports_dequantised_float_weights(tmp_path, tiny_llama):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from fedlora.common.gguf_export import write_llama_gguf
    from fedlora.common.tasks import get_task

    base_gguf = write_llama_gguf(AutoModelForCausalLM.from_pretrained(str(tiny_llama)),
                                 AutoTokenizer.from_pretrained(str(tiny_llama)), tmp_path / "base" / "tiny.gguf")
    run = make_run(tmp_path / "run", base_gguf, "causal-lm", "CAUSAL_LM")
    rep = export(run, tmp_path / "out")
    assert "quantization_config" not in json.loads((tmp_path / "out" / "config.json").read_text())
    tok = AutoTokenizer.from_pretrained(str(tmp_path / "out"))
    adapted = PeftModel.from_pretrained(get_task("causal-lm").load_base(str(base_gguf), 0, 0),
                                        str(run / "adapter"))
    merged = AutoModelForCausalLM.from_pretrained(str(tmp_path / "out"))
    assert torch.allclose(_logits(merged, tok), _logits(adapted, tok), atol=1e-5)
    assert rep.gguf is not None and rep.gguf_diff < GGUF_RELATIVE_TOLERANCE * max(1.0, rep.gguf_scale)
