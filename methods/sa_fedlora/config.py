"""SA-FedLoRA's config section and the options its client half reads from the plan."""

from __future__ import annotations

from typing import ClassVar, Literal

from pydantic import Field

from fedlora.common.config import Strict
from fedlora.methods.base import PlanOptions


class SAFedLoRAConfig(Strict):
    """SA-FedLoRA (docs/methods.md): a proximal initiating stage, then a rank budget annealed
    from ``adapter.rank`` per layer to ``final_rank`` per layer (totals over the adapted layers)."""

    prox_mu: float = Field(0.01, ge=0)
    initiating_rounds: int = Field(1, ge=0)
    heating_rounds: int = Field(1, ge=0)
    cooling_rounds: int = Field(3, ge=1)
    final_rank: float = Field(2.0, gt=0, description="mean rank per layer at the end of cooling")
    curve: Literal["temperature", "cubic"] = "temperature"
    gamma: float = Field(0.7, gt=0, lt=1)
    min_rank: int = Field(1, ge=0, description="triplets every layer keeps")
    beta1: float = Field(0.85, ge=0, lt=1)
    beta2: float = Field(0.85, ge=0, lt=1)
    round_beta: float = Field(0.85, ge=0, lt=1, description=(
        "the coordinator's EMA of the triplet importances across rounds (one round one AdaLoRA "
        "step, as for the budget): the share of the earlier rounds' smoothed importance kept; "
        "0 = each round's scores alone"))


class ImportanceOptions(PlanOptions):
    """AdaLoRA's EMA factors for the client's importance scores."""

    prefix: ClassVar[str] = "sa_fedlora"
    beta1: float = Field(ge=0, lt=1)
    beta2: float = Field(ge=0, lt=1)
