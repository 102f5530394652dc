"""Local training of whatever the plan marks trainable, with or without DP-SGD."""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterator

import numpy as np
import torch

from fedlora.client.distributed import DistContext, all_sum, shard
from fedlora.client.privacy import PrivacyLedger, SecretRandomness
from fedlora.common.training import steps_per_round
from fedlora.common.model import AdaptedModel
from fedlora.common.tasks.base import Batch, Rows, Task
from fedlora.proto.v1 import fedlora_pb2 as pb


def make_optimizer(params: list[torch.nn.Parameter], t: pb.LocalTraining) -> torch.optim.Optimizer:
    if t.optimizer in ("", "adamw"):
        return torch.optim.AdamW(params, lr=t.learning_rate, weight_decay=t.weight_decay)
    if t.optimizer == "sgd":
        return torch.optim.SGD(params, lr=t.learning_rate, weight_decay=t.weight_decay)
    raise ValueError(f"optimizer {t.optimizer!r} is not supported")


def _shuffled(task: Task, data: Rows, tokenizer, t: pb.LocalTraining, max_length: int,
              rng: np.random.Generator) -> Iterator[Batch]:
    steps = steps_per_round(t, len(data))
    done = 0
    while done < steps:
        for batch in task.batches(data, tokenizer, max(1, t.batch_size), max_length,
                                  rng.permutation(len(data)).tolist()):
            yield batch
            done += 1
            if done >= steps:
                return


def _poisson(task: Task, data: Rows, tokenizer, steps: int, rate: float, max_length: int,
             rng: np.random.Generator) -> Iterator[Batch]:
    """Poisson sampling, as the RDP accountant assumes: each example joins each batch with
    probability ``rate``. An empty draw (probability (1-rate)^n) is skipped; the accountant
    still counts the step, which only overstates the epsilon spent."""
    for _ in range(steps):
        idx = np.flatnonzero(rng.random(len(data)) < rate).tolist()
        if idx:
            yield next(task.batches(data, tokenizer, len(idx), max_length, idx))


def train_local(am: AdaptedModel, data: Rows, tokenizer, t: pb.LocalTraining, max_length: int,
                seed: int, device: torch.device, ledger: PrivacyLedger | None = None,
                after_backward: Callable[[], None] | None = None,
                ctx: DistContext | None = None, *, task: Task,
                checkpointing: bool = False, on_step: Callable[[int], None] | None = None
                ) -> dict[str, float]:
    """Runs the plan's local steps; with a ledger, DP-SGD (per-sample clipping + noise).
    ``task`` collates ``data`` and scores the model's logits.

    Randomness: ``seed`` (the round's, :func:`fedlora.common.training.round_seed`) orders the
    data and re-seeds torch's RNG (dropout masks), so the same seed, model state and plan give
    the same update bit for bit, whatever the process did before. The one exception is DP-SGD:
    its noise and its Poisson sample must not be predictable by the coordinator, which knows
    the run seed, so with a ledger both come from :class:`SecretRandomness` (OS entropy, own
    generators that no ``torch.manual_seed`` reaches) and a redone round trains differently.
    Dropout masks still follow ``seed``: the guarantee rests on noise and sampling alone.

    ``regularisation["prox_mu"]`` adds FedProx's ``mu/2 ||theta - theta_start||^2`` (its
    gradient, after backward); ``after_backward`` sees the gradients of every step before the
    optimizer does (e.g. gradient-based scores). On CUDA the forward runs under bf16 autocast
    (where the GPU has bf16; the weights stay float32, so updates travel as before), and with
    ``checkpointing`` transformers' gradient checkpointing recomputes each block's activations
    in backward instead of keeping them (the non-reentrant form, which needs no input grads
    for a frozen embedding and replays dropout exactly); DP-SGD's per-sample hooks do not
    survive the recomputation, so it is off under DP. With ``ctx`` (torchrun), every rank runs the same
    global batches, takes its rows of each, and DDP averages the gradients: the loss is scaled so
    that average is the whole batch's mean gradient, whatever the split."""
    model = am.model
    params = [p for p in model.parameters() if p.requires_grad]
    if not params:
        raise ValueError("the plan leaves nothing trainable")
    mu = float(t.regularisation.get("prox_mu", 0.0))
    if mu > 0 and ledger is not None:
        raise ValueError("a proximal term cannot be combined with DP-SGD")
    if ctx is not None and ledger is not None:
        raise ValueError("DP-SGD is not supported on a multi-process (torchrun) client")
    anchor = [p.detach().clone() for p in params] if mu > 0 else None
    opt = make_optimizer(params, t)
    torch.manual_seed(seed)
    secret = SecretRandomness.fresh(device) if ledger is not None else None
    rng = np.random.default_rng(seed) if secret is None else secret.sample
    use_bf16 = device.type == "cuda" and torch.cuda.is_bf16_supported()
    forward = model
    steps = steps_per_round(t, len(data))
    checkpointing = checkpointing and ledger is None and hasattr(model, "gradient_checkpointing_enable")
    if checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    if ledger is not None and secret is not None:  # both or neither
        from opacus import GradSampleModule
        from opacus.optimizers import DPOptimizer

        forward = GradSampleModule(model, loss_reduction="mean")
        opt = DPOptimizer(opt, noise_multiplier=ledger.noise_multiplier, max_grad_norm=ledger.clip_norm,
                          expected_batch_size=max(1, t.batch_size), loss_reduction="mean",
                          generator=secret.noise, secure_mode=True)
        source = _poisson(task, data, tokenizer, steps, ledger.sample_rate, max_length, rng)
    else:
        source = _shuffled(task, data, tokenizer, t, max_length, rng)
    if ctx is not None:
        from torch.nn.parallel import DistributedDataParallel

        forward = DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)
    model.train()
    done, seen, loss_sum = 0, 0, 0.0
    t0 = time.perf_counter()
    try:
        for enc, targets in source:
            batch, weight = len(targets), 1.0
            if ctx is not None:
                mine = shard(enc, targets, ctx)
                if len(mine[1]) == 0:  # fewer rows than ranks: take part in DDP's sync, weight 0
                    mine, weight = shard(enc, targets, DistContext(0, ctx.world)), 0.0
                enc, targets = mine
            enc = {k: v.to(device) for k, v in enc.items()}
            targets = targets.to(device)
            with torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=use_bf16):
                logits = forward(**enc).logits
            loss = task.loss(logits, targets)
            if not math.isfinite(loss.item()):
                raise FloatingPointError(f"training loss became {loss.item()} at step {done}")
            # DDP averages over ranks: scale each rank's sum so the average is the batch mean
            (loss if ctx is None else loss * (weight * len(targets) * ctx.world / batch)).backward()
            if anchor is not None:
                with torch.no_grad():
                    for p, p0 in zip(params, anchor):
                        if p.grad is not None:
                            p.grad.add_(p - p0, alpha=mu)
            if after_backward is not None:
                after_backward()
            if ledger is None and t.max_grad_norm > 0:
                torch.nn.utils.clip_grad_norm_(params, t.max_grad_norm)
            opt.step()
            opt.zero_grad(set_to_none=True)
            done += 1
            if on_step is not None:  # a progress bar: steps done of steps_per_round
                on_step(done)
            seen += int(weight * len(targets))
            loss_sum += weight * loss.item() * len(targets)
    finally:
        if ledger is not None:
            forward._close()  # remove opacus' hooks: the model is reused next round
        if checkpointing:  # evaluation and the next plan start from the plain model
            model.gradient_checkpointing_disable()
    seconds = time.perf_counter() - t0
    if ctx is not None:
        loss_sum, seen = all_sum([loss_sum, float(seen)])
    return {"train_loss": loss_sum / max(1, seen), "steps": float(done),
            "examples_seen": float(seen), "train_seconds": seconds,
            "examples_per_second": seen / seconds if seconds > 0 else 0.0}
