"""The client half of a federated method: hooks the client loop calls at fixed points.

In the spirit of Flower's client mods: the loop (join, download, train, upload, report) is the
same for every method, and a method that needs more than the plan's data fields says so by
overriding a hook, never by a branch in the loop. The default hooks do nothing, so a method
with nothing to add on the client has no client half at all.

The points, in the order a client meets them:
- :meth:`ClientHooks.on_join`: add extras to the device profile sent at join (a digest of a
  frozen tensor, measured block times).
- :meth:`ClientHooks.on_global_state`: see the round's global tensors before they are loaded
  into the model, and take out what is not model state (tensors to merge into the base).
- :meth:`ClientHooks.before_training`: return a callback run after every backward pass,
  before the optimiser step (scores that read the gradients).
- :meth:`ClientHooks.upload_extras`: tensors that ride with the update (statistics, scores);
  their names start with :data:`fedlora.common.model.REPORT_PREFIX`.
- :meth:`ClientHooks.round_profile`: a refreshed device profile sent with the round's report.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from fedlora.common.model import AdaptedModel
from fedlora.common.tasks.base import Task
from fedlora.common.wire.stats import TransferStats
from fedlora.proto.v1 import fedlora_pb2 as pb


@dataclass
class ClientContext:
    """What a method's client half may use: the run, this client's data, and the model."""

    client_id: str
    spec: pb.RunSpec
    device: torch.device
    state_dir: Path
    tokenizer: Any
    train_data: Any
    model_for: Callable[[pb.AdapterSpec], AdaptedModel]
    task: Task


class ClientHooks:
    """No-op hooks; a method's client half overrides the ones it needs."""

    def __init__(self, ctx: ClientContext) -> None:
        self.ctx = ctx

    def on_join(self, profile: pb.DeviceProfile) -> None:
        """Adds to the profile the coordinator sees before planning this client."""

    def on_global_state(self, plan: pb.Plan, am: AdaptedModel,
                        tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """The global tensors to load into the adapter (by default, all of them)."""
        return tensors

    def before_training(self, plan: pb.Plan, am: AdaptedModel) -> Callable[[], None] | None:
        """A callback for after each backward pass, or None."""
        return None

    def upload_extras(self, plan: pb.Plan, am: AdaptedModel) -> dict[str, torch.Tensor]:
        """Tensors sent with the update besides the plan's ``upload`` selection."""
        return {}

    def round_profile(self, plan: pb.Plan, metrics: dict[str, float], down: TransferStats,
                      up: TransferStats) -> pb.DeviceProfile | None:
        """A refreshed profile to send with the round's report, or None."""
        return None
