"""The causal-LM task: what a batch holds, what the loss sees, how data files are read."""

from __future__ import annotations

import json
import math
from types import SimpleNamespace

import datasets
import pytest
import torch

from fedlora.common.data import SplitPlan
from fedlora.common.config import ServerConfig, load_config
from fedlora.common.evaluate import EvalOptions
from fedlora.common.tasks import get_task
from fedlora.common.tasks.causal_lm import (IGNORE, PLAIN_PROMPT, Conversations, encode, normalise,
                                            prompt_text, resolve_source, trec_instructions)

COLUMNS = SimpleNamespace(text_column="text", label_column="label", prompt_column="prompt",
                          response_column="response", messages_column="messages")
TASK = get_task("causal-lm")


@pytest.fixture(scope="module")
def tok(tiny_llama):
    return TASK.load_tokenizer(str(tiny_llama))


def _conv(prompts: list[str], responses: list[str]) -> Conversations:
    return Conversations([[{"role": "user", "content": p}] for p in prompts], responses, [0] * len(prompts))


def test_targets_are_the_response_and_end_of_turn_only(tok):
    data = _conv(["Who wrote Hamlet?", "How far is the moon from the earth in miles?"], ["human", "number"])
    enc, targets = next(TASK.batches(data, tok, 2, 128))
    for row in range(2):
        ids = enc["input_ids"][row][enc["attention_mask"][row].bool()]
        learned = targets[row][targets[row] != IGNORE]
        assert tok.decode(learned) == data.responses[row] + tok.eos_token
        # what precedes the response is exactly the prompt the model will be asked at generation
        assert tok.decode(ids[: len(ids) - len(learned)]) == prompt_text(tok, data.prompts[row])


def test_padding_is_masked_and_never_learned(tok):
    data = _conv(["Hi?", "A much longer question about the population of the capital city?"], ["x", "y"])
    enc, targets = next(TASK.batches(data, tok, 2, 128))
    short = enc["attention_mask"][0] == 0
    assert short.any() and (targets[0][short] == IGNORE).all()
    assert (enc["attention_mask"][:, 0] == 1).all()  # right padding: rows start at position 0


def test_over_long_prompts_lose_their_oldest_tokens_not_the_response(tok):
    ids, start = encode(tok, [{"role": "user", "content": "word " * 200}], "location", 32)
    assert len(ids) == 32
    assert tok.decode(ids[start:]) == "location" + tok.eos_token


def test_the_chat_template_frames_prompts_and_a_plain_frame_stands_in_without_one(tok, tiny_llama, tmp_path):
    assert prompt_text(tok, [{"role": "user", "content": "Q?"}]).endswith("<|im_start|>assistant\n")
    from tiny import build_tiny_llama

    plain = TASK.load_tokenizer(str(build_tiny_llama(tmp_path / "plain", chat_template=False)))
    assert prompt_text(plain, [{"role": "user", "content": "Q?"}]) == PLAIN_PROMPT.format(prompt="Q?")


def test_loss_is_the_mean_over_rows_of_each_rows_mean_response_token_loss():
    logits = torch.randn(2, 5, 7)
    targets = torch.tensor([[IGNORE, IGNORE, IGNORE, 3, 4], [IGNORE, 1, 2, 3, 4]])
    per_row = []
    for r in range(2):
        nll = [-torch.log_softmax(logits[r, t - 1], -1)[targets[r, t]] for t in range(1, 5)
               if targets[r, t] != IGNORE]
        per_row.append(sum(nll) / len(nll))
    assert TASK.loss(logits, targets).item() == pytest.approx(float(sum(per_row) / 2), rel=1e-6)


def test_builtin_instructions_are_trec_questions_answered_by_one_of_six_words():
    data = trec_instructions()
    assert len(data) > 5000 and data.label_names == []
    assert set(data.responses) == {"abbreviation", "description", "entity", "human", "location", "number"}
    assert "Question: " in data.prompts[0][0]["content"]


def test_split_gives_every_process_the_same_shards_skewed_by_answer_type():
    a = TASK.federated_split("trec", SplitPlan(4, alpha=0.5, test_fraction=0.1, seed=7))
    b = TASK.federated_split("trec", SplitPlan(4, alpha=0.5, test_fraction=0.1, seed=7))
    assert a.shard(2).responses == b.shard(2).responses
    assert TASK.federated_split("nope", SplitPlan(4, alpha=0.5, test_fraction=0.1, seed=7)) is None


def test_prompt_response_rows_from_jsonl_csv_json_parquet_and_a_saved_folder(tmp_path):
    rows = [{"prompt": "2+2?", "response": "4"}, {"prompt": "Capital of France?", "response": "Paris"}]
    (tmp_path / "d.jsonl").write_text("\n".join(json.dumps(r) for r in rows))
    (tmp_path / "d.csv").write_text("prompt,response\n2+2?,4\nCapital of France?,Paris\n")
    (tmp_path / "d.json").write_text(json.dumps(rows))
    datasets.Dataset.from_list(rows).to_parquet(str(tmp_path / "d.parquet"))
    datasets.Dataset.from_list(rows).save_to_disk(str(tmp_path / "saved"))
    for name in ("d.jsonl", "d.csv", "d.json", "d.parquet", "saved"):
        data = TASK.load_file(tmp_path / name, COLUMNS)
        assert data.responses == ["4", "Paris"]
        assert data.prompts[1] == [{"role": "user", "content": "Capital of France?"}]


def test_chat_format_messages_give_the_last_assistant_turn_as_the_response(tmp_path):
    msgs = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "2+2?"},
            {"role": "assistant", "content": "4"}]
    (tmp_path / "m.jsonl").write_text(json.dumps({"messages": msgs}))
    data = TASK.load_file(tmp_path / "m.jsonl", COLUMNS)
    assert data.prompts == [msgs[:2]] and data.responses == ["4"]


def test_column_names_are_configurable(tmp_path):
    (tmp_path / "d.jsonl").write_text(json.dumps({"instruction": "Hi", "output": "Hello"}))
    cols = SimpleNamespace(**{**vars(COLUMNS), "prompt_column": "instruction", "response_column": "output"})
    assert TASK.load_file(tmp_path / "d.jsonl", cols).responses == ["Hello"]


@pytest.mark.parametrize("row, why", [
    ({"question": "x"}, "lacks 'messages' or both 'prompt' and 'response'"),
    ({"messages": [{"role": "user", "content": "x"}]}, "must end with an assistant message"),
    ({"messages": "not json"}, "not a JSON list of messages"),
    ({"messages": [{"role": "user"}]}, "expected a non-empty list"),
])
def test_bad_rows_are_refused_naming_the_row(tmp_path, row, why):
    (tmp_path / "d.jsonl").write_text(json.dumps({"prompt": "ok", "response": "ok"}) + "\n" + json.dumps(row))
    with pytest.raises(ValueError, match=f"row 1.*{why}"):
        TASK.load_file(tmp_path / "d.jsonl", COLUMNS)


def test_model_sources_a_folder_a_gguf_file_or_nothing(tmp_path, tiny_llama):
    assert resolve_source(str(tiny_llama)).gguf_file == ""
    with pytest.raises(FileNotFoundError, match="no config.json"):
        resolve_source(str(tmp_path))
    with pytest.raises(FileNotFoundError, match="not found"):
        resolve_source(str(tmp_path / "m.gguf"))


def test_the_default_causal_model_is_smollm2_as_gguf():
    src = resolve_source("default")
    assert src.gguf_file == "SmolLM2-135M-Instruct.Q4_1.gguf" and (src.folder / src.gguf_file).is_file()


def test_the_task_sets_its_own_defaults_unless_the_config_says_otherwise():
    cfg = load_config(ServerConfig, None, {"task": "causal-lm"})
    assert cfg.adapter.target_modules == ["q_proj", "v_proj"] and cfg.adapter.modules_to_save == []
    assert cfg.data.max_length == 128
    cfg = load_config(ServerConfig, None, {"task": "causal-lm", "adapter": {"target_modules": ["o_proj"]},
                                           "data": {"max_length": 64}})
    assert cfg.adapter.target_modules == ["o_proj"] and cfg.data.max_length == 64
    assert load_config(ServerConfig, None, {}).adapter.modules_to_save == ["classifier"]


def test_evaluation_reports_perplexity_and_exact_match_on_a_bounded_sample(tok, tiny_llama):
    model = TASK.load_base(str(tiny_llama), 0, 0).train()
    data = trec_instructions().subset(range(12))
    score = TASK.evaluate(model, tok, data, EvalOptions(4, 128, generate_examples=5, max_examples=10), "cpu")
    assert score.examples == 10 and score.extra["exact_match_examples"] == 5
    assert score.extra["perplexity"] == pytest.approx(math.exp(score.loss))
    assert model.training  # left in the mode it was found in


def test_exact_match_ignores_case_spacing_and_end_punctuation():
    assert normalise("  Location.\n") == normalise("location") == "location"
    assert normalise("new york") != normalise("york")


def test_a_gguf_base_loads_as_plain_float_weights_that_save_pretrained_accepts(tmp_path, tiny_llama):
    """A full fine-tuning run saves the whole model: a GGUF base must not stay 'quantized'."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from fedlora.common.gguf_export import write_llama_gguf

    gguf = write_llama_gguf(AutoModelForCausalLM.from_pretrained(str(tiny_llama)),
                            AutoTokenizer.from_pretrained(str(tiny_llama)), tmp_path / "base" / "tiny.gguf")
    model = TASK.load_base(str(gguf), 0, 0)
    assert getattr(model, "hf_quantizer", None) is None
    assert getattr(model.config, "quantization_config", None) is None
    model.save_pretrained(str(tmp_path / "saved"), safe_serialization=True)
    assert (tmp_path / "saved" / "model.safetensors").is_file()


def test_a_file_without_the_conversation_columns_names_them(tmp_path):
    (tmp_path / "d.jsonl").write_text(json.dumps({"question": "x", "answer": "y"}))
    with pytest.raises(ValueError, match=r"d.jsonl: no column 'messages' \(messages_column\) and not both "
                                         r"'prompt' and 'response'"):
        TASK.load_file(tmp_path / "d.jsonl", COLUMNS)
