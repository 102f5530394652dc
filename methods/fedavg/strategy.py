"""FedAvg over whatever the plan trains. As a method of its own (``fedavg``): full fine-tuning,
no adapter, every parameter trained, sent both ways and averaged with weights n_k: the
communication yardstick the LoRA methods are measured against.

Memory: a full model is large (the built-in causal LM is 540 MB in float32), so the round
downloads the model's own tensors (not a copy) and, for a full model, averages into one
running mean in their own dtype (:class:`WeightedSum` ``running=True``), loaded into the model
as it is. Adapters (FedAvg-LoRA, which inherits this) keep the exact, order-independent float64
sum."""

from __future__ import annotations

from collections.abc import Mapping
from typing import ClassVar

import torch

from fedlora.common.config import ServerConfig
from fedlora.methods.rules import WeightedSum
from fedlora.proto.v1 import fedlora_pb2 as pb
from fedlora.server.strategy import ClientInfo, Instruction, Strategy


class FedAvg(Strategy):
    name: ClassVar[str] = "fedavg"

    @classmethod
    def adapter_spec(cls, cfg: ServerConfig) -> pb.AdapterSpec:
        return pb.AdapterSpec(kind="none", init_seed=cfg.seed)

    def __init__(self, cfg, model):
        super().__init__(cfg, model)
        self._sum: WeightedSum | None = None

    def configure(self, rnd: int, clients: list[ClientInfo]) -> dict[str, Instruction]:
        self._sum = WeightedSum(running=not self.model.is_peft)
        return self.same_plan(rnd, clients, self.model.live_state(), self.model.shapes())

    def fold(self, rnd: int, client: ClientInfo, update: Mapping[str, torch.Tensor],
             weight: float) -> None:
        assert self._sum is not None, "fold before configure"
        self._sum.add(update, weight)

    def aggregate(self, rnd: int) -> dict[str, float]:
        assert self._sum is not None and len(self._sum) > 0, "aggregate with no updates"
        n = len(self._sum)
        mean, self._sum = self._sum.mean(), None
        self.model.load_state(mean)
        return {"aggregated": float(n)}

    def discard(self, rnd: int) -> None:
        self._sum = None
