"""Strategies by name. A new method is one module here plus one line in STRATEGIES."""

from __future__ import annotations

from fedlora.server.strategy import ClientInfo, Instruction, Strategy
from fedlora.server.strategies.fedavg import FedAvgFull, FedAvgLoRA
from fedlora.server.strategies.ce_lora import CELoRA
from fedlora.server.strategies.ffa import FFALoRA
from fedlora.server.strategies.hetero import FlexLoRA, HetLoRA
from fedlora.server.strategies.legend import Legend
from fedlora.server.strategies.sa_fedlora import SAFedLoRA

STRATEGIES: dict[str, type[Strategy]] = {
    s.name: s for s in (FedAvgLoRA, FedAvgFull, FFALoRA, CELoRA, HetLoRA, FlexLoRA, SAFedLoRA, Legend)}


def strategy_class(name: str) -> type[Strategy]:
    try:
        return STRATEGIES[name]
    except KeyError:
        raise ValueError(
            f"strategy: unknown {name!r} (known: {', '.join(sorted(STRATEGIES))})"
        ) from None


__all__ = ["ClientInfo", "Instruction", "STRATEGIES", "Strategy", "strategy_class"]
