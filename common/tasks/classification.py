"""Sequence classification: a text in, one of the run's labels out, scored by accuracy.

The base is ``AutoModelForSequenceClassification`` with a fresh head of ``num_labels``
outputs; data are (text, label) rows, from the built-in TREC set or a user's file.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from fedlora.common.data import TREC, Dataset, load_file, load_trec
from fedlora.common.evaluate import EvalOptions, Score
from fedlora.common.model import quiet_transformers, resolve_model_path
from fedlora.common.tasks.base import Batch, Columns, Task, evaluated_rows


def batches(data: Dataset, tokenizer, batch_size: int, max_length: int,
            order: list[int] | None = None) -> Iterator[Batch]:
    """Tokenized texts and their label indices; also what CE-LoRA's class statistics read."""
    idx = order if order is not None else list(range(len(data)))
    for i in range(0, len(idx), batch_size):
        sel = idx[i : i + batch_size]
        enc = tokenizer([data.texts[j] for j in sel], padding=True, truncation=True,
                        max_length=max_length, return_tensors="pt")
        yield dict(enc), torch.tensor([data.labels[j] for j in sel], dtype=torch.long)


class ClassificationTask(Task):
    name: ClassVar[str] = "classification"
    peft_task_type: ClassVar[str] = "SEQ_CLS"
    target_modules: ClassVar[tuple[str, ...]] = ("query", "value")  # BERT's attention projections
    modules_to_save: ClassVar[tuple[str, ...]] = ("classifier",)  # the fresh head trains in full
    max_length: ClassVar[int] = 48
    has_classes: ClassVar[bool] = True

    def load_base(self, model: str, num_labels: int, seed: int) -> nn.Module:
        from transformers import AutoModelForSequenceClassification

        quiet_transformers()
        torch.manual_seed(seed)  # the head is not in the checkpoint: draw it from the run seed
        return AutoModelForSequenceClassification.from_pretrained(
            str(resolve_model_path(model)), num_labels=num_labels
        )

    def load_file(self, path: Path, columns: Columns, label_names: Sequence[str] = ()) -> Dataset:
        return load_file(path, columns.text_column, columns.label_column, list(label_names) or None)

    def builtin_data(self, source: str) -> Dataset | None:
        return load_trec() if source == TREC else None

    def batches(self, data: Dataset, tokenizer, batch_size: int, max_length: int,
                order: list[int] | None = None) -> Iterator[Batch]:
        return batches(data, tokenizer, batch_size, max_length, order)

    def loss(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        # a sum over rows divided by their count, not reduction="mean": the same float
        # operations as every earlier run, so seeded runs reproduce their numbers
        return F.cross_entropy(logits.float(), targets, reduction="sum") / len(targets)

    @torch.no_grad()
    def evaluate(self, model: nn.Module, tokenizer, data: Dataset, opts: EvalOptions,
                 device: torch.device | str) -> Score:
        data = evaluated_rows(data, opts)
        if len(data) == 0:
            return Score(float("nan"), float("nan"), 0)
        was_training = model.training
        model.eval()
        correct, loss_sum = 0, 0.0
        for enc, labels in batches(data, tokenizer, opts.batch_size, opts.max_length):
            enc = {k: v.to(device) for k, v in enc.items()}
            labels = labels.to(device)
            logits = model(**enc).logits.float()
            loss_sum += F.cross_entropy(logits, labels, reduction="sum").item()
            correct += (logits.argmax(-1) == labels).sum().item()
        model.train(was_training)
        return Score(correct / len(data), loss_sum / len(data), len(data))
