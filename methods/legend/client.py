"""LEGEND's client half: per-block step times measured at join, and a profile refreshed with
every round's evidence, the planner's input."""

from __future__ import annotations

import logging

from fedlora.client.hooks import ClientHooks
from fedlora.common.model import AdaptedModel
from fedlora.common.wire.stats import TransferStats
from fedlora.methods.legend.profiling import measure_block_seconds
from fedlora.proto.v1 import fedlora_pb2 as pb

log = logging.getLogger("fedlora.client")

MIN_RATE_BYTES = 64 << 10  # a transfer smaller than this says little about the link's rate


class LegendClient(ClientHooks):
    _profile: pb.DeviceProfile | None = None  # the last one reported

    def on_join(self, profile: pb.DeviceProfile) -> None:
        profile.layer_seconds.update(self._block_seconds(self.ctx.model_for(self.ctx.spec.adapter)))
        self._profile = profile  # the client adds its link probe to this same profile

    def _block_seconds(self, am: AdaptedModel) -> dict[str, float]:
        """Per-block forward/backward seconds of one training step at the measured batch size
        (``batch`` in the map), for the planner's choice of LoRA depth."""
        c = self.ctx
        n = min(32, len(c.train_data))
        if n == 0:
            return {}
        enc, targets = next(c.task.batches(c.train_data, c.tokenizer, n, c.spec.max_length, list(range(n))))
        am.set_trainable([".*"], [])
        out = measure_block_seconds(am.model, {k: v.to(c.device) for k, v in enc.items()},
                                    targets.to(c.device), c.task.loss)
        if out:
            out["batch"] = float(n)
            log.info("one step of %d examples: %.3fs (%d blocks measured)", n, out["step"],
                     sum(k.startswith("fwd.") for k in out))
        return out

    def round_profile(self, plan: pb.Plan, metrics: dict[str, float], down: TransferStats,
                      up: TransferStats) -> pb.DeviceProfile:
        """The join profile with this round's evidence: link rates from the round's own
        transfers (where big enough to mean something), and the per-block times scaled by how
        this round's steps compared with the step measured at join (contention, throttling)."""
        p = pb.DeviceProfile()
        if self._profile is not None:
            p.CopyFrom(self._profile)
        if up.payload_bytes >= MIN_RATE_BYTES and up.seconds > 0:
            p.upload_bytes_per_second = up.payload_bytes / up.seconds
        if down.payload_bytes >= MIN_RATE_BYTES and down.seconds > 0:
            p.download_bytes_per_second = down.payload_bytes / down.seconds
        p.examples_per_second = metrics.get("examples_per_second", 0.0)
        step, steps = p.layer_seconds.get("step", 0.0), metrics.get("steps", 0.0)
        if step > 0 and steps > 0 and metrics.get("train_seconds", 0.0) > 0:
            batch = p.layer_seconds.get("batch", 1.0)
            seen_per_step = metrics.get("examples_seen", 0.0) / steps
            factor = (metrics["train_seconds"] / steps) / (step * max(seen_per_step, 1.0) / batch)
            for k in list(p.layer_seconds):
                if k.startswith(("fwd.", "bwd.")) or k in ("fixed", "step"):
                    p.layer_seconds[k] *= factor
        # what a round costs beyond training steps and transfers (model rebuild, evaluation,
        # packing): a per-round constant the planner would otherwise miss
        p.layer_seconds["round_overhead"] = max(0.0, metrics.get("round_seconds", 0.0) - metrics.get(
            "train_seconds", 0.0) - up.seconds - down.seconds)
        self._profile = p
        return p
