"""LEGEND's config section."""

from __future__ import annotations

from typing import Any

from pydantic import Field

from fedlora.common.config import Strict


class LegendConfig(Strict):
    """LEGEND's planner (docs/methods.md): LoRA depth and ranks growing towards the output."""

    r_min: int = Field(2, ge=1)
    min_depth: int = Field(1, ge=1)
    budget: int = Field(0, ge=0, description="total rank over all clients and layers; 0 = none")
    deadline_s: float = Field(0.0, ge=0, description="predicted round time not to exceed; 0 = none")

    def check(self, cfg: Any) -> None:
        if self.r_min > cfg.adapter.rank:
            raise ValueError(f"legend.r_min ({self.r_min}) exceeds adapter.rank ({cfg.adapter.rank})")
