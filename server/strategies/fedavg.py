"""FedAvg over whatever the plan trains: LoRA factors (FedIT) or every weight (full FedAvg).

FedAvg-LoRA averages A and B separately with weights n_k, as FedIT does; this is inexact
(avg(B) avg(A) != avg(BA)) and is the baseline the other LoRA methods improve on. Full
FedAvg ships every trainable weight both ways: the communication yardstick.
"""

from __future__ import annotations

from typing import ClassVar

import torch

from fedlora.common.config import ServerConfig
from fedlora.common.model import adapter_spec_from_config
from fedlora.proto.v1 import fedlora_pb2 as pb
from fedlora.server.aggregate import WeightedSum
from fedlora.server.strategy import ClientInfo, Instruction, Strategy


class FedAvgLoRA(Strategy):
    name: ClassVar[str] = "fedavg-lora"

    @classmethod
    def adapter_spec(cls, cfg: ServerConfig) -> pb.AdapterSpec:
        return adapter_spec_from_config(cfg.adapter, cfg.seed)

    def __init__(self, cfg, model):
        super().__init__(cfg, model)
        self._sum: WeightedSum | None = None

    def configure(self, rnd: int, clients: list[ClientInfo]) -> dict[str, Instruction]:
        state = self.global_state()
        expected = self.model.shapes()
        out = {}
        for c in clients:
            plan = self.base_plan(rnd)
            plan.train.append(".*")
            plan.upload.append(".*")
            out[c.id] = Instruction(plan, state, expected)
        self._sum = WeightedSum()
        return out

    def fold(self, rnd: int, client: ClientInfo, update: dict[str, torch.Tensor],
             weight: float) -> None:
        assert self._sum is not None, "fold before configure"
        self._sum.add(update, weight)

    def aggregate(self, rnd: int) -> dict[str, float]:
        assert self._sum is not None and len(self._sum) > 0, "aggregate with no updates"
        self.model.load_state(self._sum.mean())
        n = len(self._sum)
        self._sum = None
        return {"aggregated": float(n)}

    def discard(self, rnd: int) -> None:
        self._sum = None


class FedAvgFull(FedAvgLoRA):
    """Full fine-tuning: no adapter, every parameter trained, sent and averaged."""

    name: ClassVar[str] = "fedavg"

    @classmethod
    def adapter_spec(cls, cfg: ServerConfig) -> pb.AdapterSpec:
        return pb.AdapterSpec(kind="none", init_seed=cfg.seed)
