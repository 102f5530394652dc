"""LEGEND's per-device configuration planner: LoRA depth and rank distribution.

Why (LEGEND, Liu et al., arXiv 2412.20004) [paper]: LoRA layers close to the output,
with higher ranks there, give accuracy comparable to adapting every layer while
saving compute, memory and traffic. So each device gets two coupled knobs:

* **depth** -- only the top ``depth`` transformer blocks (``L - depth .. L - 1``) carry
  LoRA, and back-propagation stops below them, so a shallower depth saves backward time;
* **rank distribution** -- the adapted blocks' ranks grow towards the output
  (:func:`rank_ramp`), so a shallower depth also sends fewer bytes.

In synchronous federated rounds the slowest device sets the pace.  Giving each device
the configuration its profile can afford brings the predicted round times together, so
fast devices do more useful work instead of waiting and slow ones stop holding everyone up.

Our reading (methods.md, LEGEND, [ours]) -- the paper's full algorithm could not be
checked, so the following are our choices, not the paper's:

* the time model of :func:`predict_seconds`: measured per-block forward/backward seconds
  per local step plus a fixed per-step cost, plus bytes over the measured bandwidths, plus
  the device's last per-round overhead; the effect of the rank on compute is neglected;
* the ramp: linear interpolation from ``r_min`` (lowest adapted block) to ``r_max`` (top
  block), rounded half up;
* the greedy of :func:`plan`: a common target time ``T``, clipped by an optional deadline;
  every device takes its largest configuration predicted to finish within ``T``; then an
  optional total-rank budget is met by stepping down the device predicted to be slowest;
* ``Device.memory_bytes`` is carried for the profile but not used: there is no memory
  model yet, so no configuration is ruled out for memory.

Everything here is pure Python (no torch) and deterministic.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

BlockShape = list[tuple[int, int]]
"""``(d_in, d_out)`` of every adapted linear module of one transformer block."""


@dataclass(frozen=True)
class Device:
    """One client's profile, as reported at join and refreshed every round.

    ``forward_seconds`` / ``backward_seconds``: seconds per block per local step (one entry
    per block, index 0 = input side).  ``fixed_seconds``: per-step cost outside the blocks
    (embeddings, head, optimizer).  Bandwidths in bytes per second; 0 means unknown (its
    transfer time is then taken as 0).  ``memory_bytes``: 0 = unknown (not used by the
    planner yet).  ``fixed_bytes``: bytes sent each way whatever the LoRA configuration,
    e.g. a trainable classifier head.  ``overhead_seconds``: per-round cost outside the steps
    and the transfers (model rebuild, evaluation, packing), whatever the configuration.
    """

    client_id: str
    forward_seconds: list[float]
    backward_seconds: list[float]
    fixed_seconds: float
    steps: int
    up_bytes_per_second: float
    down_bytes_per_second: float
    memory_bytes: int = 0
    fixed_bytes: int = 0
    overhead_seconds: float = 0.0


@dataclass(frozen=True)
class Assignment:
    """A device's configuration for one round.

    LoRA sits on the top ``depth`` blocks only (``L - depth .. L - 1``); ``ranks`` has one
    entry per block, 0 for blocks without LoRA.  ``upload_bytes`` / ``download_bytes``
    include the device's ``fixed_bytes``.  ``parts``: ``predicted_seconds`` by part
    (:func:`predict_parts`).
    """

    depth: int
    ranks: list[int]
    predicted_seconds: float
    upload_bytes: int
    download_bytes: int
    parts: dict[str, float] = field(default_factory=dict)


# --------------------------------------------------------------------------- validation


def _is_int(x: object) -> bool:
    return isinstance(x, int) and not isinstance(x, bool)


def _check_shapes(shapes: Sequence[BlockShape]) -> int:
    if not isinstance(shapes, Sequence) or len(shapes) < 1:
        raise ValueError("shapes: need at least one block (L >= 1)")
    for b, block in enumerate(shapes):
        for m, dims in enumerate(block):
            if len(dims) != 2 or not all(_is_int(d) and d >= 1 for d in dims):
                raise ValueError(f"shapes[{b}][{m}]: expected (d_in, d_out) positive ints, got {dims!r}")
    return len(shapes)


def _check_ranks(r_min: int, r_max: int) -> None:
    if not _is_int(r_min) or r_min < 1:
        raise ValueError(f"r_min: must be an int >= 1, got {r_min!r}")
    if not _is_int(r_max) or r_max < r_min:
        raise ValueError(f"r_max: must be an int >= r_min ({r_min}), got {r_max!r}")


def _check_bytes_per_param(bytes_per_param: int) -> None:
    if not _is_int(bytes_per_param) or bytes_per_param < 1:
        raise ValueError(f"bytes_per_param: must be an int >= 1, got {bytes_per_param!r}")


def _nonneg(x: object) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and not math.isnan(x) and x >= 0


def _check_device(dev: Device, L: int) -> None:
    who = f"device {dev.client_id!r}"
    if not isinstance(dev.client_id, str) or not dev.client_id:
        raise ValueError(f"client_id: must be a non-empty string, got {dev.client_id!r}")
    for name in ("forward_seconds", "backward_seconds"):
        values = getattr(dev, name)
        if len(values) != L:
            raise ValueError(f"{who}: {name} has {len(values)} entries, expected {L} (one per block)")
        for b, s in enumerate(values):
            if not (_nonneg(s) and math.isfinite(s)):
                raise ValueError(f"{who}: {name}[{b}] must be finite and >= 0, got {s!r}")
    for name in ("fixed_seconds", "overhead_seconds"):
        v = getattr(dev, name)
        if not (_nonneg(v) and math.isfinite(v)):
            raise ValueError(f"{who}: {name} must be finite and >= 0, got {v!r}")
    if not _is_int(dev.steps) or dev.steps < 0:
        raise ValueError(f"{who}: steps must be an int >= 0, got {dev.steps!r}")
    for name in ("up_bytes_per_second", "down_bytes_per_second"):
        if not _nonneg(getattr(dev, name)):
            raise ValueError(f"{who}: {name} must be >= 0 (0 = unknown), got {getattr(dev, name)!r}")
    for name in ("memory_bytes", "fixed_bytes"):
        v = getattr(dev, name)
        if not _is_int(v) or v < 0:
            raise ValueError(f"{who}: {name} must be an int >= 0, got {v!r}")


def _check_devices(devices: Sequence[Device], L: int) -> None:
    seen: set[str] = set()
    for dev in devices:
        _check_device(dev, L)
        if dev.client_id in seen:
            raise ValueError(f"client_id: duplicate device {dev.client_id!r}")
        seen.add(dev.client_id)


# --------------------------------------------------------------------------- model


def rank_ramp(depth: int, L: int, r_min: int, r_max: int) -> list[int]:
    """Ranks for LoRA on the top ``depth`` of ``L`` blocks, growing towards the output.

    Blocks below ``L - depth`` get 0; the lowest adapted block gets ``r_min``, the top
    block ``r_max``, those between a linear interpolation rounded half up (integer
    arithmetic, so exact).  ``depth == 1`` gives ``r_max`` on the top block alone.

    Deepening never lowers a block's rank (block ``L-1-j`` gets
    ``r_min + (r_max - r_min) * (depth-1-j) / (depth-1)``, non-decreasing in ``depth``),
    so bytes and compute never fall as the depth grows.
    """
    if not _is_int(L) or L < 1:
        raise ValueError(f"L: must be an int >= 1, got {L!r}")
    if not _is_int(depth) or not 1 <= depth <= L:
        raise ValueError(f"depth: must be an int in 1..{L}, got {depth!r}")
    _check_ranks(r_min, r_max)
    ranks = [0] * L
    if depth == 1:
        ranks[L - 1] = r_max
        return ranks
    span, den = r_max - r_min, depth - 1
    for i in range(depth):  # i = 0: lowest adapted block, i = depth - 1: top block
        ranks[L - depth + i] = r_min + (2 * span * i + den) // (2 * den)
    return ranks


def lora_bytes(ranks: Sequence[int], shapes: Sequence[BlockShape], bytes_per_param: int = 4) -> int:
    """Bytes of the LoRA factors: ``sum_blocks sum_modules r * (d_in + d_out) * bytes_per_param``.

    (A is ``r x d_in`` and B is ``d_out x r``.)
    """
    L = _check_shapes(shapes)
    _check_bytes_per_param(bytes_per_param)
    if len(ranks) != L:
        raise ValueError(f"ranks: has {len(ranks)} entries, expected {L} (one per block)")
    total = 0
    for b, (r, block) in enumerate(zip(ranks, shapes)):
        if not _is_int(r) or r < 0:
            raise ValueError(f"ranks[{b}]: must be an int >= 0, got {r!r}")
        total += r * sum(d_in + d_out for d_in, d_out in block)
    return total * bytes_per_param


def _transfer_seconds(nbytes: int, bytes_per_second: float) -> float:
    # 0 = unknown bandwidth: no basis for a transfer time, so it counts as 0.
    return nbytes / bytes_per_second if bytes_per_second > 0 else 0.0


def predict_parts(dev: Device, depth: int, payload: int, L: int) -> dict[str, float]:
    """A round's predicted seconds by part, named as the client measures them:
    ``train_seconds`` (the steps), ``upload_seconds`` / ``download_seconds`` (``payload`` bytes
    each way) and ``overhead_seconds`` (the device's per-round rest)."""
    compute = sum(dev.forward_seconds) + sum(dev.backward_seconds[L - depth :]) + dev.fixed_seconds
    return {
        "train_seconds": dev.steps * compute,
        "upload_seconds": _transfer_seconds(payload, dev.up_bytes_per_second),
        "download_seconds": _transfer_seconds(payload, dev.down_bytes_per_second),
        "overhead_seconds": dev.overhead_seconds,
    }


def _predict(dev: Device, depth: int, payload: int, L: int) -> float:
    return sum(predict_parts(dev, depth, payload, L).values())


def predict_seconds(
    dev: Device, depth: int, ranks: Sequence[int], shapes: Sequence[BlockShape], bytes_per_param: int = 4
) -> float:
    """Predicted round time of ``dev`` with LoRA of ``ranks`` on its top ``depth`` blocks.

    ``steps * (sum of all forward_seconds + sum of backward_seconds of the top depth blocks
    + fixed_seconds) + payload / up_bytes_per_second + payload / down_bytes_per_second
    + overhead_seconds`` with ``payload = lora_bytes(ranks) + fixed_bytes``.

    The forward pass runs through every block; back-propagation stops below the adapted
    blocks.  The rank's own effect on compute is neglected (a LoRA matmul of rank r << d is
    small next to the frozen ``d x d`` one).  A bandwidth of 0 (unknown) contributes no
    transfer time.  ``depth`` may be 0 (no LoRA; only ``fixed_bytes`` travel).
    """
    L = _check_shapes(shapes)
    _check_device(dev, L)
    if not _is_int(depth) or not 0 <= depth <= L:
        raise ValueError(f"depth: must be an int in 0..{L}, got {depth!r}")
    payload = lora_bytes(ranks, shapes, bytes_per_param)
    for b in range(L - depth):
        if ranks[b] != 0:
            raise ValueError(f"ranks[{b}]: block is below the top {depth} blocks, so its rank must be 0")
    return _predict(dev, depth, payload + dev.fixed_bytes, L)


def _assignment(dev: Device, depth: int, ranks: list[int], shapes, bytes_per_param: int) -> Assignment:
    payload = lora_bytes(ranks, shapes, bytes_per_param) + dev.fixed_bytes
    parts = predict_parts(dev, depth, payload, len(shapes))
    return Assignment(
        depth=depth,
        ranks=ranks,
        predicted_seconds=sum(parts.values()),
        upload_bytes=payload,
        download_bytes=payload,
        parts=parts,
    )


# --------------------------------------------------------------------------- planners


def plan(
    devices: Sequence[Device],
    shapes: Sequence[BlockShape],
    *,
    r_min: int,
    r_max: int,
    min_depth: int = 1,
    deadline_s: float | None = None,
    budget: int | None = None,
    bytes_per_param: int = 4,
) -> dict[str, Assignment]:
    """Greedy per-device depth and rank distribution (LEGEND's configuration, our reading).

    1. Candidates per device: depths ``min_depth .. L``, each with
       ``rank_ramp(depth, L, r_min, r_max)``.  Ranks never fall as the depth grows, so this
       order is also the order of predicted time and bytes ("smallest" .. "largest").
    2. Target ``T = max(min_k time_k(largest), max_k time_k(smallest))``: no device is asked
       to beat what the slowest can do at its smallest, and none is held below what the
       fastest does at its largest.  With ``deadline_s``, ``T = min(T, deadline_s)``.
    3. Each device takes its largest candidate predicted within ``T``, or its smallest if
       none is (it then misses the deadline; it is not dropped -- that is the caller's call).
    4. With ``budget`` (total rank, summed over every device's ``ranks``): while exceeded,
       step one device down one depth -- the one with the largest predicted time among those
       above ``min_depth`` (ties: larger total rank, then smaller ``client_id``) -- until
       within budget or nothing can shrink (the result may then still exceed it).

    Deterministic; the order of ``devices`` does not matter.  Returns ``{client_id: Assignment}``.
    """
    L = _check_shapes(shapes)
    _check_ranks(r_min, r_max)
    _check_bytes_per_param(bytes_per_param)
    if not _is_int(min_depth) or not 1 <= min_depth <= L:
        raise ValueError(f"min_depth: must be an int in 1..{L}, got {min_depth!r}")
    if deadline_s is not None and not (_nonneg(deadline_s) and deadline_s > 0):
        raise ValueError(f"deadline_s: must be > 0 seconds, got {deadline_s!r}")
    if budget is not None and (not _is_int(budget) or budget < 0):
        raise ValueError(f"budget: must be an int >= 0, got {budget!r}")
    _check_devices(devices, L)
    if not devices:
        return {}

    depths = range(min_depth, L + 1)
    ramps = {d: rank_ramp(d, L, r_min, r_max) for d in depths}
    # candidates[cid][i] is the configuration of depth min_depth + i
    candidates = {
        dev.client_id: [_assignment(dev, d, list(ramps[d]), shapes, bytes_per_param) for d in depths]
        for dev in devices
    }

    target = max(
        min(c[-1].predicted_seconds for c in candidates.values()),
        max(c[0].predicted_seconds for c in candidates.values()),
    )
    if deadline_s is not None:
        target = min(target, deadline_s)

    chosen: dict[str, int] = {}
    for cid, cands in candidates.items():
        fits = [i for i, a in enumerate(cands) if a.predicted_seconds <= target]
        chosen[cid] = fits[-1] if fits else 0

    if budget is not None:

        def total_rank() -> int:
            return sum(sum(candidates[cid][i].ranks) for cid, i in chosen.items())

        while total_rank() > budget:
            shrinkable = [cid for cid, i in chosen.items() if i > 0]
            if not shrinkable:
                break
            victim = min(
                shrinkable,
                key=lambda cid: (
                    -candidates[cid][chosen[cid]].predicted_seconds,
                    -sum(candidates[cid][chosen[cid]].ranks),
                    cid,
                ),
            )
            chosen[victim] -= 1

    return {dev.client_id: candidates[dev.client_id][chosen[dev.client_id]] for dev in devices}


def uniform(
    devices: Sequence[Device], shapes: Sequence[BlockShape], rank: int, bytes_per_param: int = 4
) -> dict[str, Assignment]:
    """The FedAvg-LoRA baseline plan: every device adapts all ``L`` blocks at one ``rank``."""
    L = _check_shapes(shapes)
    if not _is_int(rank) or rank < 1:
        raise ValueError(f"rank: must be an int >= 1, got {rank!r}")
    _check_bytes_per_param(bytes_per_param)
    _check_devices(devices, L)
    return {dev.client_id: _assignment(dev, L, [rank] * L, shapes, bytes_per_param) for dev in devices}
