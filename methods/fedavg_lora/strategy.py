"""FedAvg-LoRA (FedIT): every client trains the same LoRA; A and B are averaged separately with
weights n_k. Inexact (avg(B) avg(A) != avg(BA)): the baseline the other LoRA methods improve on."""

from __future__ import annotations

from typing import ClassVar

from fedlora.common.config import ServerConfig
from fedlora.common.model import adapter_spec_from_config
from fedlora.methods.fedavg.strategy import FedAvg
from fedlora.proto.v1 import fedlora_pb2 as pb


class FedAvgLoRA(FedAvg):
    name: ClassVar[str] = "fedavg-lora"

    @classmethod
    def adapter_spec(cls, cfg: ServerConfig) -> pb.AdapterSpec:
        return adapter_spec_from_config(cfg.adapter, cfg.seed)
