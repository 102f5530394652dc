"""A method's strategy on a tiny model, and seeded updates for it: for tests that play rounds
against a strategy directly, without a coordinator or clients."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from fedlora import methods
from fedlora.common.config import ServerConfig
from fedlora.common.model import AdaptedModel
from fedlora.common.tasks import get_task
from fedlora.server.strategy import Strategy, TensorSpec

TASK = get_task("classification")
LABELS = 6


def build_strategy(name: str, model: Path, run_dir: Path, **fields: Any) -> Strategy:
    """Strategy ``name`` over ``model`` with rank 4, alpha 8 and 3 rounds unless ``fields``
    (ServerConfig fields and method sections) say otherwise."""
    cls = methods.get(name).strategy
    cfg = ServerConfig(model=str(model), strategy=name, run_dir=run_dir, insecure=True,
                       **{"rounds": 3, "adapter": {"rank": 4, "alpha": 8.0}, **fields})
    base = TASK.load_base(str(model), LABELS, cfg.seed)
    return cls(cfg, AdaptedModel(base, cls.adapter_spec(cfg), TASK.peft_task_type))


def seeded_update(expected: dict[str, TensorSpec], seed: int, scale: float = 0.1) -> dict[str, torch.Tensor]:
    """An update of exactly the expected names, shapes and dtypes: uniform in [0, scale)."""
    g = torch.Generator().manual_seed(seed)
    return {n: (torch.rand(shape, generator=g) * scale).to(dtype) for n, (shape, dtype) in expected.items()}
