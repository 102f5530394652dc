"""Measured forward and backward seconds per transformer block, for LEGEND's planner.

Why measure per block: LEGEND's knob is LoRA *depth* (only the top blocks carry LoRA, so
back-propagation stops below them); predicting what a depth costs on a given device needs
each block's forward and backward time there, not a FLOP count.

How: hooks stamp the clock as each block's forward ends and as the gradient of each block's
output arrives during backward; the gaps are the per-block times. For the stamps to exist
below the lowest trainable layer, the input of the first block is made to require grad for
the measured steps, so the backward runs through every block (the cost of full depth).
The reported ``fixed`` time is the rest of a step: embeddings, head, loss and optimizer-free
overhead.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import torch
from torch import nn


def transformer_blocks(model: nn.Module) -> list[nn.Module]:
    """The model's stack of transformer blocks: the longest ModuleList named layer(s)/h/block(s)."""
    best: list[nn.Module] = []
    for name, mod in model.named_modules():
        if isinstance(mod, nn.ModuleList) and name.rsplit(".", 1)[-1] in ("layer", "layers", "h", "block", "blocks"):
            if len(mod) > len(best):
                best = list(mod)
    return best


def _hidden(out):
    return out[0] if isinstance(out, (tuple, list)) else out


def measure_block_seconds(model: nn.Module, enc: dict[str, torch.Tensor], targets: torch.Tensor,
                          loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
                          repeats: int = 2) -> dict[str, float]:
    """``{"fwd.i": s, "bwd.i": s, "fixed": s, "step": s}`` per step, the fastest of ``repeats``
    timed steps after one warm-up; ``loss_fn(logits, targets)`` is the task's training loss.
    Gradients are discarded; parameters are unchanged, and so is the RNG (dropout draws here
    must not shift training's)."""
    with torch.random.fork_rng(devices=[]):
        return _measure(model, enc, targets, loss_fn, repeats)


def _measure(model: nn.Module, enc: dict[str, torch.Tensor], targets: torch.Tensor,
             loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor], repeats: int) -> dict[str, float]:
    blocks = transformer_blocks(model)
    if not blocks:
        return {}
    n = len(blocks)
    stamps: dict[str, float] = {}
    handles = []

    def pre0(_m, args, kwargs):
        h = args[0] if args else kwargs.get("hidden_states")
        stamps["f_start"] = time.perf_counter()
        if h is not None and not h.requires_grad and h.grad_fn is None:
            h.requires_grad_(True)
            h.register_hook(lambda g: stamps.__setitem__("b_in", time.perf_counter()))
        elif h is not None and h.requires_grad:
            h.register_hook(lambda g: stamps.__setitem__("b_in", time.perf_counter()))

    def post(i):
        def hook(_m, _args, out):
            stamps[f"f{i}"] = time.perf_counter()
            h = _hidden(out)
            if isinstance(h, torch.Tensor) and h.requires_grad:
                h.register_hook(lambda g: stamps.__setitem__(f"b{i}", time.perf_counter()))
        return hook

    handles.append(blocks[0].register_forward_pre_hook(pre0, with_kwargs=True))
    for i, b in enumerate(blocks):
        handles.append(b.register_forward_hook(post(i)))
    was = model.training
    model.train()
    best: dict[str, float] | None = None
    try:
        for rep in range(repeats + 1):
            stamps.clear()
            t0 = time.perf_counter()
            loss = loss_fn(model(**enc).logits, targets)
            loss.backward()
            t1 = time.perf_counter()
            model.zero_grad(set_to_none=True)
            if rep == 0 or any(k not in stamps for k in [*(f"f{i}" for i in range(n)), *(f"b{i}" for i in range(n)), "b_in"]):
                continue
            fwd = [stamps["f0"] - stamps["f_start"]] + [stamps[f"f{i}"] - stamps[f"f{i-1}"] for i in range(1, n)]
            # the gradient of block i's output arrives at b{i}; block i's backward ends when the
            # gradient of its input arrives: b{i-1}, or b_in for the first block
            bwd = [(stamps[f"b{i-1}"] if i > 0 else stamps["b_in"]) - stamps[f"b{i}"] for i in range(n)]
            step = t1 - t0
            rec = {f"fwd.{i}": max(0.0, v) for i, v in enumerate(fwd)}
            rec.update({f"bwd.{i}": max(0.0, v) for i, v in enumerate(bwd)})
            rec["fixed"] = max(0.0, step - sum(fwd) - sum(bwd))
            rec["step"] = step
            if best is None or step < best["step"]:
                best = rec
    finally:
        for h in handles:
            h.remove()
        model.train(was)
    return best or {}
