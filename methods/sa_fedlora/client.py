"""SA-FedLoRA's client half: AdaLoRA importance of every LoRA triplet, tracked over the round's
steps and uploaded with the update (zeros for a layer that got no gradient)."""

from __future__ import annotations

from collections.abc import Callable

import torch

from fedlora.client.hooks import ClientHooks
from fedlora.common.model import AdaptedModel, lora_pairs
from fedlora.methods.sa_fedlora.config import ImportanceOptions
from fedlora.methods.sa_fedlora.importance import IMPORTANCE_PREFIX, ImportanceEMA
from fedlora.proto.v1 import fedlora_pb2 as pb


class SAFedLoRAClient(ClientHooks):
    _ema: ImportanceEMA | None = None

    def before_training(self, plan: pb.Plan, am: AdaptedModel) -> Callable[[], None]:
        opts = ImportanceOptions.read(plan.options)
        ema = self._ema = ImportanceEMA(opts.beta1, opts.beta2)
        pairs = {path: (am.parameter(a), am.parameter(b)) for path, (a, b) in lora_pairs(am.names()).items()}
        return lambda: ema.update(pairs)

    def upload_extras(self, plan: pb.Plan, am: AdaptedModel) -> dict[str, torch.Tensor]:
        assert self._ema is not None, "upload before training"
        scores = self._ema.scores()
        return {IMPORTANCE_PREFIX + path: scores.get(path, torch.zeros(am.parameter(a).shape[0]))
                for path, (a, _b) in lora_pairs(am.names()).items()}
