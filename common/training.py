"""Facts about a plan's local training that both ends compute: the coordinator predicts
round times and privacy cost from them, the client runs them."""

from __future__ import annotations

import hashlib
import math

from fedlora.proto.v1 import fedlora_pb2 as pb


def steps_per_round(t: pb.LocalTraining, n: int) -> int:
    per_epoch = max(1, math.ceil(n / max(1, t.batch_size)))
    total = per_epoch * max(1, t.epochs)
    return min(total, t.max_steps) if t.max_steps else total


def round_seed(seed: int, rnd: int, client_id: str) -> int:
    """The one seed of a client's round: everything random in its local training (data order,
    dropout masks) is drawn from it, so a redone round (retry, resume) reproduces its update
    bit for bit and every client draws its own. A hash (not Python's ``hash()``, which is
    salted per process) of the run seed, the round and the client id, in 63 bits."""
    digest = hashlib.sha256(f"fedlora/round/{seed}/{rnd}/{client_id}".encode()).digest()
    return int.from_bytes(digest[:8], "little") >> 1
