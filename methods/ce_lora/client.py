"""CE-LoRA's client half: data statistics (per class, or one mean) ride with every C it uploads."""

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
        opts = StatsOptions.read(plan.options)
        return class_stats(am, c.tokenizer, c.train_data, c.spec.num_labels, c.spec.max_length,
                           c.device, opts.stats_noise, c.task, opts.data_stats)
