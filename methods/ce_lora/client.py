"""CE-LoRA's client half: class statistics ride with every C it uploads."""

from __future__ import annotations

import torch

from fedlora.client.hooks import ClientHooks
from fedlora.common.model import AdaptedModel
from fedlora.methods.ce_lora.config import StatsOptions
from fedlora.methods.ce_lora.stats import class_stats
from fedlora.proto.v1 import fedlora_pb2 as pb


class CELoRAClient(ClientHooks):
    def upload_extras(self, plan: pb.Plan, am: AdaptedModel) -> dict[str, torch.Tensor]:
        c = self.ctx
        noise = StatsOptions.read(plan.options).stats_noise
        return class_stats(am, c.tokenizer, c.train_data, c.spec.num_labels, c.spec.max_length,
                           c.device, noise)
