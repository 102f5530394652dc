"""Accuracy and loss of a classifier on a dataset; the same code scores global and local."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from fedlora.common.data import Dataset


@dataclass(frozen=True)
class Score:
    accuracy: float
    loss: float
    examples: int


def batches(data: Dataset, tokenizer, batch_size: int, max_length: int,
            order: list[int] | None = None) -> Iterator[tuple[dict[str, torch.Tensor], torch.Tensor]]:
    idx = order if order is not None else list(range(len(data)))
    for i in range(0, len(idx), batch_size):
        sel = idx[i : i + batch_size]
        enc = tokenizer([data.texts[j] for j in sel], padding=True, truncation=True,
                        max_length=max_length, return_tensors="pt")
        yield dict(enc), torch.tensor([data.labels[j] for j in sel], dtype=torch.long)


@torch.no_grad()
def evaluate(model: nn.Module, tokenizer, data: Dataset, batch_size: int = 128,
             max_length: int = 48, device: torch.device | str = "cpu") -> Score:
    if len(data) == 0:
        return Score(float("nan"), float("nan"), 0)
    was_training = model.training
    model.eval()
    correct, loss_sum = 0, 0.0
    for enc, labels in batches(data, tokenizer, batch_size, max_length):
        enc = {k: v.to(device) for k, v in enc.items()}
        labels = labels.to(device)
        logits = model(**enc).logits.float()
        loss_sum += F.cross_entropy(logits, labels, reduction="sum").item()
        correct += (logits.argmax(-1) == labels).sum().item()
    model.train(was_training)
    return Score(correct / len(data), loss_sum / len(data), len(data))
