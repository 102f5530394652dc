"""One client on several GPUs (or CPU processes) of a node: ``torchrun --nproc-per-node N -m
fedlora.client ...``.

Rank 0 alone talks to the coordinator. Before each round's training it sends the other ranks
what they need, as one wire blob (:func:`fedlora.common.wire.blob.pack`) (the adapter state it just loaded plus the plan and the
trainable names in the metadata) over torch.distributed; every rank then trains the same model
with DistributedDataParallel on its slice of each global batch (rows ``rank::world``), so the
gradients DDP averages are exactly those of the whole batch and the result equals a
single-process client's up to float error. Rank 0 evaluates, uploads and reports; the others
wait for the next round or for the end.
"""

from __future__ import annotations

import base64
import logging
import os
from dataclasses import dataclass

import torch
import torch.distributed as dist

from fedlora.common.wire.blob import pack, unpack
from fedlora.common.wire.codec import Chain

log = logging.getLogger("fedlora.client")

DONE = "done"
TRAIN = "train"


@dataclass(frozen=True)
class DistContext:
    rank: int
    world: int

    @property
    def leader(self) -> bool:
        return self.rank == 0


def from_env(device: torch.device) -> DistContext | None:
    """The torchrun context (WORLD_SIZE > 1), with the process group up; None otherwise."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return None
    if not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return DistContext(dist.get_rank(), dist.get_world_size())


def local_device(name: str) -> str:
    """Under torchrun each rank takes its own GPU (LOCAL_RANK) where the device is CUDA."""
    if "LOCAL_RANK" in os.environ and name in ("auto", "cuda") and torch.cuda.is_available():
        return f"cuda:{int(os.environ['LOCAL_RANK'])}"
    return name


def send(kind: str, tensors: dict[str, torch.Tensor], meta: dict[str, bytes]) -> None:
    """Rank 0: broadcast a round (or the end) to the other ranks, as a wire blob."""
    header = {"kind": kind, **{k: base64.b64encode(v).decode() for k, v in meta.items()}}
    _broadcast_bytes(pack(tensors, header, Chain()).data)


def receive() -> tuple[str, dict[str, torch.Tensor], dict[str, bytes]]:
    tensors, header = unpack(_broadcast_bytes(None))
    for key in ("codec_chain", "stage_bytes"):  # pack's own entries
        header.pop(key, None)
    kind = header.pop("kind")
    return kind, tensors, {k: base64.b64decode(v) for k, v in header.items()}


def _broadcast_bytes(data: bytes | None) -> bytes:
    size = torch.tensor([len(data) if data is not None else 0], dtype=torch.long)
    dist.broadcast(size, src=0)
    buf = (torch.frombuffer(bytearray(data), dtype=torch.uint8) if data is not None
           else torch.empty(int(size.item()), dtype=torch.uint8))
    dist.broadcast(buf, src=0)
    return buf.numpy().tobytes()


def close() -> None:
    """Both sides of the end: every rank meets here, then the process group is torn down.

    Without it rank 0 could exit while gloo still held a connection the other rank had just
    closed, and gloo's background thread aborted the process (SIGABRT after a run that had
    finished: a non-zero exit for a client that did all its work)."""
    if dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()


def shard(enc: dict[str, torch.Tensor], labels: torch.Tensor, ctx: DistContext):
    """This rank's rows of a global batch."""
    return {k: v[ctx.rank::ctx.world] for k, v in enc.items()}, labels[ctx.rank::ctx.world]


def all_sum(values: list[float]) -> list[float]:
    t = torch.tensor(values, dtype=torch.float64)
    dist.all_reduce(t)
    return t.tolist()
