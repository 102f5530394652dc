"""CE-LoRA's data statistics: what its personalised aggregation compares clients by.

Where the task has classes: per-class mean [CLS] embeddings of the *base* model (adapters off,
so every client embeds in the same space) and class counts. Where it has none (a causal LM):
one group, the base model's last hidden state averaged over each example's attended prompt
tokens, then over the examples, and the example count. Either is a privacy-light summary of a
client's data, optionally noised on the client, that the coordinator's data similarity is
computed from. Rows are read with the task's own batches, so both tasks share one code path.

The noise is drawn from OS entropy, never from the round seed: the coordinator knows the run
seed, so noise derived from it could be subtracted exactly. A redone round therefore sends other
noise on the means (the trained C itself is still reproducible bit for bit).
"""

from __future__ import annotations

import contextlib
import secrets
from typing import Literal

import torch
from torch import nn

from fedlora.common.model import REPORT_PREFIX, AdaptedModel
from fedlora.common.tasks.base import Rows, Task
from fedlora.common.tasks.causal_lm import IGNORE  # a per-token target outside the loss

STATS_MEAN = REPORT_PREFIX + "stats.class_mean"
STATS_COUNT = REPORT_PREFIX + "stats.class_count"


def stats_groups(mode: Literal["classes", "mean"], num_labels: int) -> int:
    """Rows of the statistics: one per class, or one."""
    return num_labels if mode == "classes" else 1


def _backbone(model: nn.Module) -> nn.Module:
    """The transformer without its head (BertModel, LlamaModel): hidden states without the
    logits, which for a causal LM are batch x tokens x vocabulary floats nothing here reads."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    return getattr(base, "base_model", base)


def _prompt_mask(enc: dict[str, torch.Tensor], targets: torch.Tensor) -> torch.Tensor:
    """Attended tokens that are not predicted: with per-token targets (a causal LM) the
    prompt, else (one label per row) every attended token."""
    mask = enc["attention_mask"].bool()
    if targets.shape == mask.shape:
        mask = mask & (targets == IGNORE)
    return mask


@torch.no_grad()
def class_stats(am: AdaptedModel, tokenizer, data: Rows, num_labels: int, max_length: int,
                device: torch.device, noise_std: float, task: Task | None = None,
                mode: Literal["classes", "mean"] = "classes") -> dict[str, torch.Tensor]:
    """Mean embeddings of the *base* model (adapters off, so every client embeds in the same
    space) per group and the group counts; optional Gaussian noise on the means. ``task``
    (default: classification) reads the rows; ``mode`` is the resolved ``ce_lora.data_stats``."""
    if task is None:
        from fedlora.common.tasks import get_task

        task = get_task("classification")
    model = am.model
    groups = stats_groups(mode, num_labels)
    sums = torch.zeros(groups, model.config.hidden_size, dtype=torch.float64)
    counts = torch.zeros(groups, dtype=torch.float64)
    was = model.training
    model.eval()
    ctx = model.disable_adapter() if hasattr(model, "disable_adapter") else contextlib.nullcontext()
    with ctx:
        backbone = _backbone(model)
        for enc, targets in task.batches(data, tokenizer, 128, max_length):
            enc = {k: v.to(device) for k, v in enc.items()}
            hidden = backbone(**enc).last_hidden_state.double().cpu()
            if mode == "classes":
                sums.index_add_(0, targets, hidden[:, 0])  # the [CLS] token
                counts += torch.bincount(targets, minlength=groups).double()
            else:
                m = _prompt_mask({k: v.cpu() for k, v in enc.items()}, targets).double()
                per_row = (hidden * m[..., None]).sum(1) / m.sum(1).clamp(min=1)[:, None]
                sums[0] += per_row.sum(0)
                counts[0] += len(targets)
    model.train(was)
    means = sums / counts.clamp(min=1)[:, None]
    if noise_std > 0:
        g = torch.Generator().manual_seed(secrets.randbits(63))  # secret: not the run seed's
        means = means + torch.randn(means.shape, generator=g, dtype=torch.float64) * noise_std
    means[counts == 0] = 0.0
    return {STATS_MEAN: means.float(), STATS_COUNT: counts.float()}
