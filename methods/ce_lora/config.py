"""CE-LoRA's config section and the options its client half reads from the plan."""

from __future__ import annotations

from typing import ClassVar, Literal

from pydantic import Field

from fedlora.common.config import Strict
from fedlora.methods.base import PlanOptions


class CELoRAConfig(Strict):
    """CE-LoRA's personalised aggregation (docs/methods.md): ``sim = lam * s_data +
    (1 - lam) * s_param``, weights ``softmax(sim / tau)``."""

    lam: float = Field(0.5, ge=0, le=1)
    tau: float = Field(0.2, gt=0)
    param_similarity: Literal["weights", "update"] = Field(
        "weights", description="cosine of the flattened Cs, or of what each client changed in its C")
    stats_noise: float = Field(0.0, ge=0, description="Gaussian noise std added to class means")
    b_init_std: float = Field(1e-3, gt=0)
    freeze_ab: bool = False


class StatsOptions(PlanOptions):
    """What the client needs to compute its class statistics."""

    prefix: ClassVar[str] = "ce_lora"
    stats_noise: float


class TriLoraOptions(PlanOptions):
    """The tri-matrix adapter's initialisation (``AdapterSpec.options``)."""

    prefix: ClassVar[str] = "tri_lora"
    b_init_std: float  # B small and non-zero: with B = 0 the gradient of C is zero
