"""FLoRA's client half: merge the downloaded stack into this client's base weights, then
train the round's fresh LoRA on top."""

from __future__ import annotations

import torch

from fedlora.client.hooks import ClientHooks
from fedlora.common.model import AdaptedModel, lora_pairs
from fedlora.methods.flora.merge import STACK_PREFIX, BaseMerger, stack_names
from fedlora.proto.v1 import fedlora_pb2 as pb


class FLoRAClient(ClientHooks):
    _merger: BaseMerger | None = None

    def on_global_state(self, plan: pb.Plan, am: AdaptedModel,
                        tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        if self._merger is None or self._merger.weights.keys() != lora_pairs(am.names()).keys():
            self._merger = BaseMerger(am)  # W0 of this model, before any merge
        stacks = {}
        for path in self._merger.weights:
            a_name, b_name = stack_names(path)
            if a_name in tensors:
                stacks[path] = (tensors[a_name], tensors[b_name])
        self._merger.set(stacks)
        return {n: t for n, t in tensors.items() if not n.startswith(STACK_PREFIX)}
