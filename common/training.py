"""Facts about a plan's local training that both ends compute: the coordinator predicts
round times and privacy cost from them, the client runs them."""

from __future__ import annotations

import math

from fedlora.proto.v1 import fedlora_pb2 as pb


def steps_per_round(t: pb.LocalTraining, n: int) -> int:
    per_epoch = max(1, math.ceil(n / max(1, t.batch_size)))
    total = per_epoch * max(1, t.epochs)
    return min(total, t.max_steps) if t.max_steps else total
