"""HetLoRA (Cho et al. 2024): each client trains at a fixed rank of its own; the coordinator
zero-pads every client's factors to r_max, averages them (weights ||s_k B_k A_k||_F or n_k,
``ranks.weighting``) and truncates back to each client's rank (methods/rules.py).

The rank comes from ``ranks.client_ranks`` (by id), from device memory (``ranks.source:
memory``) or from ``ranks.cycle`` indexed by the client's partition, so a weak device can take
part with a smaller adapter.
"""

from __future__ import annotations

from typing import ClassVar

from fedlora.methods.ranked import FixedRanks


class HetLoRA(FixedRanks):
    name: ClassVar[str] = "hetlora"
    rule_name: ClassVar[str] = "hetlora"
