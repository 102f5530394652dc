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
    data_stats: Literal["auto", "classes", "mean"] = Field(
        "auto", description="what the data similarity compares: per-class mean [CLS] embeddings "
        "('classes'), or one mean embedding of each client's prompts ('mean': the base model's last "
        "hidden state averaged over each example's attended prompt tokens, then over examples); "
        "'auto' = classes where the task has classes, else mean")
    b_init_std: float = Field(1e-3, gt=0)
    freeze_ab: bool = False


class StatsOptions(PlanOptions):
    """What the client needs to compute its data statistics (``data_stats`` resolved: never
    'auto' on the wire, so both halves group the same way)."""

    prefix: ClassVar[str] = "ce_lora"
    stats_noise: float
    data_stats: Literal["classes", "mean"]


def resolve_data_stats(cfg: CELoRAConfig, has_classes: bool) -> Literal["classes", "mean"]:
    """The grouping the run's statistics use; 'classes' on a task without classes is an error."""
    if cfg.data_stats == "auto":
        return "classes" if has_classes else "mean"
    if cfg.data_stats == "classes" and not has_classes:
        raise ValueError("ce_lora.data_stats: 'classes' needs a task with classes; this task has "
                         "none (use 'mean' or 'auto')")
    return cfg.data_stats


class TriLoraOptions(PlanOptions):
    """The tri-matrix adapter's initialisation (``AdapterSpec.options``)."""

    prefix: ClassVar[str] = "tri_lora"
    b_init_std: float  # B small and non-zero: with B = 0 the gradient of C is zero
