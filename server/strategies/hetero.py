"""HetLoRA and FlexLoRA as strategies: each client trains at a fixed rank of its own.

The rank comes from ``ranks.client_ranks`` (by id), from device memory (``ranks.source:
memory``) or from ``ranks.cycle`` indexed by the client's partition, so a weak device can take
part with a smaller adapter. The two differ only in the aggregation rule (server/hetrank.py):
HetLoRA pads, averages and truncates the factors; FlexLoRA averages the full products and
cuts each client's factors from their SVD.
"""

from __future__ import annotations

from typing import ClassVar

from fedlora.server.strategy import ClientInfo
from fedlora.server.strategies.ranked import RankedLoRA, Ranks, rank_from_memory


class FixedRanks(RankedLoRA):
    rule_name: ClassVar[str]

    def __init__(self, cfg, model):
        super().__init__(cfg, model, rule=self.rule_name)

    def client_rank(self, client: ClientInfo, clients: list[ClientInfo]) -> int:
        rc = self.cfg.ranks
        if client.id in rc.client_ranks:
            return rc.client_ranks[client.id]
        if rc.source == "memory":
            top = max(c.profile.memory_bytes for c in clients)
            return rank_from_memory(client.profile.memory_bytes, top, rc.min_rank, self.r_max)
        cycle = rc.cycle or _halving(self.r_max, rc.min_rank)
        return cycle[max(client.partition, 0) % len(cycle)]

    def ranks_for(self, rnd: int, clients: list[ClientInfo]) -> dict[str, Ranks]:
        return {c.id: dict.fromkeys(self.pairs, self.client_rank(c, clients)) for c in clients}


def _halving(r_max: int, r_min: int) -> list[int]:
    """r_max, r_max/2, r_max/4, ... down to r_min."""
    out, r = [], r_max
    while r >= r_min:
        out.append(r)
        if r == r_min:
            break
        r = max(r_min, r // 2)
    return out


class HetLoRA(FixedRanks):
    name: ClassVar[str] = "hetlora"
    rule_name: ClassVar[str] = "hetlora"


class FlexLoRA(FixedRanks):
    name: ClassVar[str] = "flexlora"
    rule_name: ClassVar[str] = "flexlora"
