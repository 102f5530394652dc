"""FLoRA's stack and its merge into the base weights, the same code on both ends.

The stack of a layer holds every merged update so far as one pair of factors with scaling 1:
``A_stack`` (R x d_in) and ``B_stack`` (d_out x R), so ``W = W0 + B_stack A_stack`` exactly.
Both ends keep the untouched ``W0`` and set ``W`` from it (never ``W += ...`` round after
round), so the coordinator's model and every client's hold bit-identical base weights.
``W0`` is kept, and ``W0 + B A`` computed, on the CPU in float64 whatever device the model is
on (the downloaded stack arrives on the CPU; the coordinator merges there): a client on a GPU
gets the same bits as the coordinator, and the only copy to the GPU is the result.
"""

from __future__ import annotations

import torch
from torch import nn

from fedlora.common.model import REPORT_PREFIX, AdaptedModel, lora_pairs

STACK_PREFIX = REPORT_PREFIX + "flora."  # download tensors that are not adapter state


def stack_names(path: str) -> tuple[str, str]:
    return f"{STACK_PREFIX}{path}.A", f"{STACK_PREFIX}{path}.B"


def base_weights(am: AdaptedModel) -> dict[str, nn.Parameter]:
    """Module path -> the frozen base weight under each LoRA layer."""
    root = am.model.base_model.model  # peft's LoraModel wraps the transformers model
    return {path: root.get_submodule(path).get_base_layer().weight for path in lora_pairs(am.names())}


class BaseMerger:
    """Holds ``W0`` of every adapted layer of one model and sets ``W0 + B A`` on demand."""

    def __init__(self, am: AdaptedModel) -> None:
        self.weights = base_weights(am)
        self.original = {p: w.detach().to("cpu", copy=True) for p, w in self.weights.items()}

    @torch.no_grad()
    def set(self, stacks: dict[str, tuple[torch.Tensor, torch.Tensor]]) -> None:
        for path, w in self.weights.items():
            w0 = self.original[path]
            if path in stacks:
                A, B = (t.to("cpu", torch.float64) for t in stacks[path])
                w.copy_((w0.double() + B @ A).to(w.dtype))
            else:
                w.copy_(w0)
