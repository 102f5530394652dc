"""LEGEND's client half: per-block step times measured at join, and a profile refreshed with
every round's evidence, the planner's input."""

from __future__ import annotations

import logging
from collections.abc import Mapping

from fedlora.client.hooks import ClientContext, ClientHooks
from fedlora.common.model import AdaptedModel
from fedlora.common.wire.stats import TransferStats
from fedlora.methods.legend.profiling import measure_block_seconds
from fedlora.proto.v1 import fedlora_pb2 as pb

log = logging.getLogger("fedlora.client")

MIN_RATE_BYTES = 64 << 10  # a transfer smaller than this says little about the link's rate
# [ours] two depths fit the backward's own scale only when their backward differs by at least
# this share of the latest step: a slope through nearby depths amplifies the steps' noise
FIT_MIN_SPAN = 0.25


class LegendClient(ClientHooks):
    _profile: pb.DeviceProfile | None = None  # the last one reported
    _join: pb.DeviceProfile | None = None  # the block times measured at join: the model's shape

    def __init__(self, ctx: ClientContext) -> None:
        super().__init__(ctx)
        self._steps: dict[int, float] = {}  # depth -> last measured seconds per step, latest last

    def on_join(self, profile: pb.DeviceProfile) -> None:
        profile.layer_seconds.update(self._block_seconds(self.ctx.model_for(self.ctx.spec.adapter)))
        self._profile = profile  # the client adds its link probe to this same profile
        self._join = pb.DeviceProfile()
        self._join.layer_seconds.update(profile.layer_seconds)

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
        """The last profile with this round's evidence: link rates from the round's own
        transfers, block times fitted to the step times measured at each depth
        (:func:`fit_block_seconds`)."""
        p = pb.DeviceProfile()
        if self._profile is not None:
            p.CopyFrom(self._profile)
        if self._join is None:  # no join measurement: the profile is its own shape
            self._join = pb.DeviceProfile()
            self._join.layer_seconds.update(p.layer_seconds)
        shape = dict(self._join.layer_seconds)
        n = block_count(shape)
        depth = int(plan.options.get("legend_depth", "0") or 0)
        depth = depth if 1 <= depth <= n else n  # no depth in the plan: every block trained
        measured = step_seconds(metrics, shape.get("batch", 1.0))
        if n and measured is not None:
            self._steps.pop(depth, None)
            self._steps[depth] = measured
            p.layer_seconds.update(fit_block_seconds(shape, self._steps))
        refresh_rates(p, metrics, down, up)
        self._profile = p
        return p


def block_count(ls: Mapping[str, float]) -> int:
    """How many blocks a profile's ``layer_seconds`` time (``fwd.0`` .. ``fwd.{L-1}``)."""
    return sum(1 for k in ls if k.startswith("fwd."))


def depth_step_seconds(ls: Mapping[str, float], depth: int) -> float:
    """Seconds of one step (of ``batch`` examples) at LoRA ``depth`` by a profile's
    ``layer_seconds``: every block's forward, the top ``depth`` blocks' backward and the fixed
    part -- the planner's compute model (planner.predict_seconds)."""
    n = block_count(ls)
    return (sum(ls.get(f"fwd.{i}", 0.0) for i in range(n))
            + sum(ls.get(f"bwd.{i}", 0.0) for i in range(n - depth, n)) + ls.get("fixed", 0.0))


def step_seconds(metrics: Mapping[str, float], batch: float) -> float | None:
    """A round's measured seconds per step of ``batch`` examples (the profile's unit); None
    when the round trained nothing."""
    steps, train = metrics.get("steps", 0.0), metrics.get("train_seconds", 0.0)
    if steps <= 0 or train <= 0:
        return None
    seen_per_step = metrics.get("examples_seen", 0.0) / steps
    return (train / steps) * batch / max(seen_per_step, 1.0)


def fit_block_seconds(shape: Mapping[str, float], measured: Mapping[int, float]) -> dict[str, float]:
    """Block times that reproduce the measured seconds per step at the depths that ran.

    ``shape`` is the join measurement (every block's forward and backward, ``fixed``),
    ``measured`` the last measured seconds per step at each depth, latest last. A depth-``d``
    step runs every forward, the fixed part and the backward of the top ``d`` blocks only, so
    it is set against that same depth of the shape, never against the full-depth step: the
    time is ``a x (forward + fixed) + b x backward(top d)`` of the shape.

    - One depth measured: ``a = b``, the shape scaled uniformly (a device slowed or sped up
      as a whole); that depth is then predicted exactly as measured.
    - Two or more: ``a`` and ``b`` through the latest measurement and the latest one at a
      depth whose backward differs from it by at least :data:`FIT_MIN_SPAN` of the latest
      step, so a per-step cost the join measurement missed (the optimiser, data loading) and
      a backward cheaper or dearer than at join (LoRA training computes no frozen weight's
      gradient) both fit; both depths are then predicted exactly. A fit with a negative
      ``a`` or ``b`` (noise: a deeper step measured faster) falls back to the uniform scale of
      the latest.

    Returns ``fwd.i``, ``bwd.i``, ``fixed`` and ``step`` (the full-depth step) of the fit.
    """
    n = block_count(shape)
    fwd = sum(shape.get(f"fwd.{i}", 0.0) for i in range(n)) + shape.get("fixed", 0.0)

    def bwd(d: int) -> float:
        return depth_step_seconds(shape, d) - fwd

    order = list(measured)
    d1 = order[-1]
    m1 = measured[d1]
    a = b = m1 / depth_step_seconds(shape, d1) if depth_step_seconds(shape, d1) > 0 else 1.0
    others = [d for d in order[:-1] if abs(bwd(d) - bwd(d1)) * a >= FIT_MIN_SPAN * m1 > 0]
    if others and fwd > 0:
        d2 = others[-1]
        b2 = (m1 - measured[d2]) / (bwd(d1) - bwd(d2))
        a2 = (m1 - b2 * bwd(d1)) / fwd
        if a2 >= 0 and b2 >= 0:
            a, b = a2, b2
    out = {f"fwd.{i}": shape.get(f"fwd.{i}", 0.0) * a for i in range(n)}
    out.update({f"bwd.{i}": shape.get(f"bwd.{i}", 0.0) * b for i in range(n)})
    out["fixed"] = shape.get("fixed", 0.0) * a
    out["step"] = depth_step_seconds(out, n)
    return out


def refresh_rates(p: pb.DeviceProfile, metrics: Mapping[str, float], down: TransferStats,
                  up: TransferStats) -> None:
    """Link rates from the round's own transfers (where big enough to mean something), and what
    a round costs beyond training steps and transfers (model rebuild, evaluation, packing): a
    per-round constant the planner would otherwise miss."""
    if up.payload_bytes >= MIN_RATE_BYTES and up.seconds > 0:
        p.upload_bytes_per_second = up.payload_bytes / up.seconds
    if down.payload_bytes >= MIN_RATE_BYTES and down.seconds > 0:
        p.download_bytes_per_second = down.payload_bytes / down.seconds
    p.examples_per_second = metrics.get("examples_per_second", 0.0)
    p.layer_seconds["round_overhead"] = max(0.0, metrics.get("round_seconds", 0.0) - metrics.get(
        "train_seconds", 0.0) - up.seconds - down.seconds)
