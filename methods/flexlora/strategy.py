"""FlexLoRA (Bai et al. 2024): each client trains at a fixed rank of its own (as HetLoRA
chooses it); the coordinator averages the full products ``sum p_k s_k B_k A_k`` per layer and
cuts each client's factors from their SVD (methods/rules.py)."""

from __future__ import annotations

from typing import ClassVar

from fedlora.methods.ranked import FixedRanks


class FlexLoRA(FixedRanks):
    name: ClassVar[str] = "flexlora"
    rule_name: ClassVar[str] = "flexlora"
