"""One round's state and its opening: the plans, each plan's upload limit and deadline, and
the global state packed once per distinct set of tensors.

A :class:`Round` is mutated only under the engine's condition; it never holds transfer bytes
(those live in :mod:`fedlora.server.transfers`), so a retried round starts with none.
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

from fedlora.common.config import ServerConfig
from fedlora.common.errors import Refused, Status
from fedlora.common.wire.blob import Blob, pack
from fedlora.common.wire.codec import Chain
from fedlora.common.wire.protocol import HEADER_SLACK
from fedlora.common.wire.stats import tensor_bytes
from fedlora.proto.v1 import fedlora_pb2 as pb
from fedlora.server.strategy import ClientInfo, Instruction, Strategy, TensorSpec

log = logging.getLogger("fedlora.server")


@dataclass
class Round:
    number: int
    attempt: int
    instructions: dict[str, Instruction]
    blobs: dict[str, Blob]
    deadline: float
    started: float
    open: bool = True
    accepted: dict[str, float] = field(default_factory=dict)   # client -> weight
    refused: dict[str, str] = field(default_factory=dict)      # final refusals, client -> why
    lost: dict[str, str] = field(default_factory=dict)         # given up (silent), client -> why
    reports: dict[str, dict[str, float]] = field(default_factory=dict)

    def finished(self, cid: str) -> bool:
        """Nothing more is awaited from ``cid`` this round: refused, given up, or accepted with
        its report in."""
        return (cid in self.refused or cid in self.lost
                or (cid in self.accepted and cid in self.reports))

    def settled(self) -> bool:
        """Every planned client is finished."""
        return all(self.finished(c) for c in self.instructions)


def plan_round(strategy: Strategy, cfg: ServerConfig, down_chain: Chain, rnd: int, attempt: int,
               clients: list[ClientInfo], spool: Path | None = None) -> Round:
    """Asks the strategy for the plans and completes them with what the engine enforces.
    Clients that share a tensor dict share one packed blob (packing is the costly part); a
    blob over ``cfg.spool_bytes`` is packed into a file under ``spool`` (:func:`pack`), so
    serving a full model costs the coordinator no second copy of it."""
    instructions = strategy.configure(rnd, clients)
    blobs: dict[str, Blob] = {}
    packed: dict[int, Blob] = {}
    deadline = time.time() + cfg.deadline_s
    for cid, inst in instructions.items():
        key = id(inst.tensors)
        if key not in packed:
            big = spool is not None and tensor_bytes(inst.tensors) > cfg.spool_bytes
            packed[key] = pack(inst.tensors, {"round": rnd, "client": "coordinator",
                                              "version": f"round-{rnd}"}, down_chain,
                               spool if big else None)
            if not isinstance(packed[key].data, bytes):
                log.info("round %d: global state (%d bytes) served from a spool file", rnd,
                         packed[key].size)
        blob = packed[key]
        blobs[cid] = blob
        inst.plan.max_upload_bytes = int(planned_bytes(inst.expected) * cfg.max_upload_factor) + HEADER_SLACK
        inst.plan.deadline_unix = deadline
        inst.plan.global_state.CopyFrom(pb.BlobRef(
            version=f"round-{rnd}", digest=blob.digest, size=blob.size,
            codec=pb.Codec(stages=list(blob.codec))))
    return Round(rnd, attempt, instructions, blobs, deadline, time.time())


def planned_bytes(expected: dict[str, TensorSpec]) -> int:
    """Raw bytes of the tensors a plan expects (what ``tensor_bytes`` of the update is)."""
    return sum(math.prod(s) * torch.empty((), dtype=d).element_size() for s, d in expected.values())


def require_open(current: Round | None, rnd: int, cid: str) -> Round:
    """The current round, if it is ``rnd``, still open, and plans for ``cid``."""
    if current is None or current.number != rnd:
        now = current.number if current else 0
        raise Refused(Status.FAILED_PRECONDITION,
                      f"round {rnd} is not open (current round: {now})")
    if not current.open:
        raise Refused(Status.FAILED_PRECONDITION,
                      f"round {rnd} is closed (deadline passed or aggregated): late update refused")
    if cid not in current.instructions:
        raise Refused(Status.FAILED_PRECONDITION,
                      f"client {cid!r} is not planned for round {rnd}")
    return current
