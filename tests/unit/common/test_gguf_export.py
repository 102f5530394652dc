"""The f16 GGUF writer: what it writes, transformers' GGUF loader reads back as the same model
and tokenizer (the loader is the independent check: it is transformers' code, not ours)."""

from __future__ import annotations

import pytest
import torch

from fedlora.common.gguf_export import GGUFUnsupported, permute_rotary, write_llama_gguf

PROMPTS = ["What county is Modesto, California in?", "Who was Galileo?"]


def _load(folder):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    return (AutoModelForCausalLM.from_pretrained(str(folder), dtype=torch.float32),
            AutoTokenizer.from_pretrained(str(folder)))


def _roundtrip(model, tokenizer, tmp_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    write_llama_gguf(model, tokenizer, tmp_path / "m.gguf")
    return (AutoModelForCausalLM.from_pretrained(str(tmp_path), gguf_file="m.gguf", dtype=torch.float32),
            AutoTokenizer.from_pretrained(str(tmp_path), gguf_file="m.gguf"))


def _max_diff(a, b, tokenizer) -> float:
    diffs = []
    with torch.no_grad():
        for p in PROMPTS:
            text = tokenizer.apply_chat_template([{"role": "user", "content": p}],
                                                 add_generation_prompt=True, tokenize=False)
            ids = tokenizer(text, add_special_tokens=False, return_tensors="pt")["input_ids"]
            diffs.append(float((a(ids).logits - b(ids).logits).abs().max()))
    return max(diffs)


@pytest.mark.parametrize("heads", [4, 2])
def test_rotary_permutation_is_what_the_transformers_loader_undoes(heads):
    from transformers.modeling_gguf_pytorch_utils import LlamaTensorProcessor

    w = torch.randn(32, 12)
    back = LlamaTensorProcessor({"num_attention_heads": 4, "num_key_value_heads": heads}) \
        ._reverse_permute_weights(permute_rotary(w, heads).numpy(), 4, heads)
    assert not torch.equal(permute_rotary(w, heads), w)
    assert torch.equal(torch.from_numpy(back), w)


def test_tiny_llama_reads_back_with_the_same_logits_to_f16_rounding(tiny_llama, tmp_path):
    model, tok = _load(tiny_llama)
    back, _ = _roundtrip(model, tok, tmp_path)
    assert back.config.tie_word_embeddings and back.config.num_key_value_heads == 2
    diff = _max_diff(model, back, tok)
    assert 0 < diff < 2e-3  # f16 weights: not bit-equal, but close (scale of these logits ~0.7)


def test_tokenizer_reads_back_with_the_same_ids_specials_and_chat_template(tiny_llama, tmp_path):
    model, tok = _load(tiny_llama)
    _, back = _roundtrip(model, tok, tmp_path)
    text = tok.apply_chat_template([{"role": "user", "content": PROMPTS[0]}],
                                   add_generation_prompt=True, tokenize=False)
    assert back(text, add_special_tokens=False)["input_ids"] == tok(text, add_special_tokens=False)["input_ids"]
    assert back(text)["input_ids"] == tok(text)["input_ids"]
    assert (back.bos_token, back.eos_token, back.pad_token) == (tok.bos_token, tok.eos_token, tok.pad_token)
    assert back.chat_template == tok.chat_template


def test_untied_head_is_written_as_output_and_read_back(tiny_llama, tmp_path):
    model, tok = _load(tiny_llama)
    model.config.tie_word_embeddings = False
    model.lm_head.weight = torch.nn.Parameter(torch.randn_like(model.lm_head.weight) * 0.05)
    back, _ = _roundtrip(model, tok, tmp_path)
    assert not back.config.tie_word_embeddings
    assert torch.allclose(back.lm_head.weight, model.lm_head.weight, atol=1e-4)
    assert _max_diff(model, back, tok) < 2e-3


def test_a_model_of_another_family_is_refused(tiny_model, tmp_path):
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    bert = AutoModelForSequenceClassification.from_pretrained(str(tiny_model), num_labels=2)
    with pytest.raises(GGUFUnsupported, match="Llama-family"):
        write_llama_gguf(bert, AutoTokenizer.from_pretrained(str(tiny_model)), tmp_path / "m.gguf")
    assert not (tmp_path / "m.gguf").exists()
