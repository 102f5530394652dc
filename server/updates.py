"""Update admission: what an upload must declare before its first byte is kept, and what the
complete blob must hold before any strategy sees it.

Refusals are :class:`Refused`; INVALID_ARGUMENT ones are final for the round (the engine
records them), the others leave the client free to try again.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any

import torch

from fedlora.common.errors import Refused, Status
from fedlora.common.model import REPORT_PREFIX
from fedlora.common.wire.blob import BlobError, unpack_lazy
from fedlora.common.wire.codec import Expectation
from fedlora.server.rounds import Round
from fedlora.server.strategy import Instruction
from fedlora.server.validate import validate_names, validate_tensor


@dataclass(frozen=True)
class Update:
    """A checked update: the weights to fold (deltas applied), the client's n_k, and the
    per-stage sizes its codec reported. ``tensors`` decodes (and applies the delta to) each
    tensor when it is read, so folding a full model holds one decoded tensor at a time."""

    tensors: Mapping[str, torch.Tensor]
    weight: float
    stage_bytes: list[int]


def check_declared(r: Round, cid: str, total: int, digest: str) -> None:
    """An upload's first message: the client may still send this round, and the declared size
    and digest are usable. Nothing is buffered before this passes."""
    if cid in r.accepted:
        raise Refused(Status.ALREADY_EXISTS, f"round {r.number}: update already accepted")
    if cid in r.refused:
        raise Refused(Status.FAILED_PRECONDITION,
                      f"round {r.number}: update already refused ({r.refused[cid]})")
    if cid in r.lost:
        raise Refused(Status.FAILED_PRECONDITION,
                      f"round {r.number}: the coordinator gave up on {cid!r} ({r.lost[cid]})")
    limit = r.instructions[cid].plan.max_upload_bytes
    if total <= 0:
        raise Refused(Status.INVALID_ARGUMENT, "upload declares no size")
    if total > limit:
        raise Refused(Status.RESOURCE_EXHAUSTED,
                      f"upload of {total} bytes exceeds the plan's limit of {limit} bytes")
    if len(digest) != 64:
        raise Refused(Status.INVALID_ARGUMENT, "upload declares no sha256 blob digest")


# Blobs decoded at once on the coordinator: N clients finishing together hold at most this many
# decoded updates (each bounded by its plan), not N.
DECODE_SLOTS = 2


def read_blob(data: bytes | memoryview, inst: Instruction) -> tuple[Mapping[str, torch.Tensor], dict[str, Any]]:
    """Tensors (decoded one at a time, when read) and header of a verified blob, within the
    client's plan: its chain must be the plan's upload codec and every size it declares within
    the expected tensors', checked before anything is decoded. An undecodable or out-of-plan
    blob is a final refusal naming the tensor and what was wrong, whenever it is found."""
    try:
        tensors, header = unpack_lazy(data, Expectation.of(inst.plan.upload_codec.stages, inst.expected))
        return Refusing(tensors), header
    except BlobError as e:
        raise Refused(Status.INVALID_ARGUMENT, f"undecodable update: {e}") from None
    except Exception as e:  # any bytes a peer sends: whatever else decoding raises is its fault too
        raise Refused(Status.INVALID_ARGUMENT,
                      f"undecodable update: {type(e).__name__}: {str(e)[:200]}") from None


class Refusing(Mapping[str, torch.Tensor]):
    """A lazily decoded upload whose decoding errors are final refusals, as :func:`read_blob`'s."""

    def __init__(self, tensors: Mapping[str, torch.Tensor]):
        self._tensors = tensors

    def __getitem__(self, name: str) -> torch.Tensor:
        try:
            return self._tensors[name]
        except KeyError:
            raise
        except BlobError as e:
            raise Refused(Status.INVALID_ARGUMENT, f"undecodable update: {e}") from None
        except Exception as e:
            raise Refused(Status.INVALID_ARGUMENT,
                          f"undecodable update: {type(e).__name__}: {str(e)[:200]}") from None

    def __iter__(self) -> Iterator[str]:
        return iter(self._tensors)

    def __len__(self) -> int:
        return len(self._tensors)


def check_update(tensors: dict[str, torch.Tensor], meta: dict[str, Any], inst: Instruction,
                 rnd: int, cid: str, vouched: int | None) -> Update:
    """The header names this round and client, the planned upload kind and the client's
    ``vouched`` example count (fixed at admission), which is the weight folded, never the
    header's own claim; the tensors are exactly the plan's (after a delta is applied to the
    round's state)."""
    if meta.get("round") != rnd or meta.get("client") != cid:
        raise Refused(Status.INVALID_ARGUMENT,
                      f"blob header names round {meta.get('round')!r} and client "
                      f"{meta.get('client')!r}, expected {rnd} and {cid!r}")
    if vouched is None:
        raise Refused(Status.INVALID_ARGUMENT, f"client {cid!r} has declared no example count")
    claimed = meta.get("num_examples")
    if isinstance(claimed, bool) or not isinstance(claimed, (int, float)) or claimed != vouched:
        raise Refused(Status.INVALID_ARGUMENT,
                      f"blob header declares num_examples={claimed!r}, the client's count is "
                      f"{vouched}, fixed when it declared it")
    if meta.get("upload_kind", "weights") != (inst.plan.upload_kind or "weights"):
        raise Refused(Status.INVALID_ARGUMENT,
                      f"blob is a {meta.get('upload_kind')!r} upload, the plan asks for "
                      f"{inst.plan.upload_kind!r}")
    validate_names(tensors, inst.expected)
    delta = inst.plan.upload_kind == "delta"
    for name in tensors:  # one decoded tensor at a time; the fold decodes again
        t = tensors[name]
        validate_tensor(name, t, inst.expected[name])
        if delta and name in inst.tensors:
            _add_delta(name, inst.tensors[name], t)
    if delta:
        missing = sorted(n for n in tensors if n not in inst.tensors and not n.startswith(REPORT_PREFIX))
        if missing:
            raise Refused(Status.INVALID_ARGUMENT,
                          f"delta for {missing[0]!r}, which the round's global state does not hold")
        tensors = Applied(inst.tensors, tensors)
    return Update(tensors, float(vouched), [int(b) for b in meta.get("stage_bytes", [])])


class Applied(Mapping[str, torch.Tensor]):
    """Weights from a delta upload, a tensor at a time: the round's global tensor plus the
    client's difference. Reports (``fedlora.*``) ride along as they are."""

    def __init__(self, base: Mapping[str, torch.Tensor], delta: Mapping[str, torch.Tensor]):
        self._base, self._delta = base, delta

    def __getitem__(self, name: str) -> torch.Tensor:
        d = self._delta[name]
        return _add_delta(name, self._base[name], d) if name in self._base else d

    def __iter__(self) -> Iterator[str]:
        return iter(self._delta)

    def __len__(self) -> int:
        return len(self._delta)


def _add_delta(name: str, base: torch.Tensor, d: torch.Tensor) -> torch.Tensor:
    """``base + d`` in ``base``'s dtype; refused where it overflows. Same-dtype floating point
    adds are correctly rounded, so they are done as they are (no float64 copy of a large
    tensor); mixed dtypes go through float64."""
    if base.dtype == d.dtype and base.is_floating_point():
        out = base + d
    else:
        out = (base.to(torch.float64) + d.to(torch.float64)).to(base.dtype)
    if out.is_floating_point() and not bool(torch.isfinite(out).all()):
        raise Refused(Status.INVALID_ARGUMENT, f"tensor {name!r}: delta overflows")
    return out


def apply_delta(base: dict[str, torch.Tensor], delta: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Weights from a delta upload, all at once (:class:`Applied` reads them one at a time)."""
    missing = sorted(n for n in set(delta) - set(base) if not n.startswith(REPORT_PREFIX))
    if missing:
        raise Refused(Status.INVALID_ARGUMENT,
                      f"delta for {missing[0]!r}, which the round's global state does not hold")
    applied = Applied(base, delta)
    return {name: applied[name] for name in applied}
