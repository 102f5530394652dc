"""CE-LoRA's data statistics: what its personalised aggregation compares clients by.

Per-class mean [CLS] embeddings of the *base* model (adapters off, so every client embeds in the
same space) and class counts, optionally noised on the client: privacy-light summaries of a
client's data that the coordinator's data similarity is computed from.

The noise is drawn from OS entropy, never from the round seed: the coordinator knows the run
seed, so noise derived from it could be subtracted exactly. A redone round therefore sends other
noise on the means (the trained C itself is still reproducible bit for bit).
"""

from __future__ import annotations

import contextlib
import secrets

import torch

from fedlora.common.data import Dataset
from fedlora.common.tasks.classification import batches
from fedlora.common.model import REPORT_PREFIX, AdaptedModel

STATS_MEAN = REPORT_PREFIX + "stats.class_mean"
STATS_COUNT = REPORT_PREFIX + "stats.class_count"


@torch.no_grad()
def class_stats(am: AdaptedModel, tokenizer, data: Dataset, num_labels: int, max_length: int,
                device: torch.device, noise_std: float) -> dict[str, torch.Tensor]:
    """Per-class mean [CLS] embedding of the *base* model (adapters off, so every client
    embeds in the same space) and class counts; optional Gaussian noise on the means."""
    model = am.model
    hidden = model.config.hidden_size
    sums = torch.zeros(num_labels, hidden, dtype=torch.float64)
    counts = torch.zeros(num_labels, dtype=torch.float64)
    was = model.training
    model.eval()
    ctx = model.disable_adapter() if hasattr(model, "disable_adapter") else contextlib.nullcontext()
    with ctx:
        for enc, labels in batches(data, tokenizer, 128, max_length):
            out = model(**{k: v.to(device) for k, v in enc.items()}, output_hidden_states=True)
            cls = out.hidden_states[-1][:, 0].double().cpu()
            sums.index_add_(0, labels, cls)
            counts += torch.bincount(labels, minlength=num_labels).double()
    model.train(was)
    means = sums / counts.clamp(min=1)[:, None]
    if noise_std > 0:
        g = torch.Generator().manual_seed(secrets.randbits(63))  # secret: not the run seed's
        means = means + torch.randn(means.shape, generator=g, dtype=torch.float64) * noise_std
    means[counts == 0] = 0.0
    return {STATS_MEAN: means.float(), STATS_COUNT: counts.float()}
