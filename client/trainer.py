"""Local training of whatever the plan marks trainable."""

from __future__ import annotations

import math
import time

import numpy as np
import torch

from fedlora.common.data import Dataset
from fedlora.common.evaluate import batches
from fedlora.common.model import AdaptedModel
from fedlora.proto.v1 import fedlora_pb2 as pb


def make_optimizer(params: list[torch.nn.Parameter], t: pb.LocalTraining) -> torch.optim.Optimizer:
    if t.optimizer in ("", "adamw"):
        return torch.optim.AdamW(params, lr=t.learning_rate, weight_decay=t.weight_decay)
    if t.optimizer == "sgd":
        return torch.optim.SGD(params, lr=t.learning_rate, weight_decay=t.weight_decay)
    raise ValueError(f"optimizer {t.optimizer!r} is not supported")


def train_local(am: AdaptedModel, data: Dataset, tokenizer, t: pb.LocalTraining, max_length: int,
                seed: int, device: torch.device) -> dict[str, float]:
    """Runs the plan's epochs (capped at ``max_steps``); returns loss and throughput."""
    model = am.model
    params = [p for p in model.parameters() if p.requires_grad]
    if not params:
        raise ValueError("the plan leaves nothing trainable")
    opt = make_optimizer(params, t)
    rng = np.random.default_rng(seed)
    use_bf16 = device.type == "cuda" and torch.cuda.is_bf16_supported()
    model.train()
    steps, seen, loss_sum = 0, 0, 0.0
    t0 = time.perf_counter()
    for _ in range(max(1, t.epochs)):
        order = rng.permutation(len(data)).tolist()
        for enc, labels in batches(data, tokenizer, max(1, t.batch_size), max_length, order):
            enc = {k: v.to(device) for k, v in enc.items()}
            labels = labels.to(device)
            with torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=use_bf16):
                loss = model(**enc, labels=labels).loss
            if not math.isfinite(loss.item()):
                raise FloatingPointError(f"training loss became {loss.item()} at step {steps}")
            loss.backward()
            if t.max_grad_norm > 0:
                torch.nn.utils.clip_grad_norm_(params, t.max_grad_norm)
            opt.step()
            opt.zero_grad(set_to_none=True)
            steps += 1
            seen += len(labels)
            loss_sum += loss.item() * len(labels)
            if t.max_steps and steps >= t.max_steps:
                break
        if t.max_steps and steps >= t.max_steps:
            break
    seconds = time.perf_counter() - t0
    return {"train_loss": loss_sum / max(1, seen), "steps": float(steps),
            "examples_seen": float(seen), "train_seconds": seconds,
            "examples_per_second": seen / seconds if seconds > 0 else 0.0}
