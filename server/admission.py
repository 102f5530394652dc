"""What a client may say about itself: its reports and device profiles, checked in one place
before any of it reaches the run's books (metrics.jsonl, logs, the strategy, round records),
and the example counts the coordinator vouches for as the clients' aggregation weights.

Every number must be finite, every map and string bounded (the bounds below, defined once);
a bad report or profile is refused INVALID_ARGUMENT naming the field, and nothing of it is
kept. The bounds are generous for honest clients (LEGEND's per-layer timings of a deep model
are well under ``MAX_KEYS``; the longest decline reason, a privacy budget, is ~150 characters)
and small enough that a hostile client cannot fill the run folder through them.

A client's example count (``DeviceProfile.num_examples``, its n_k) is the weight its updates
are folded with, so a client cannot simply claim one: :class:`ExampleCounts` holds it to the
size of the shard the coordinator made for it (built-in data; a client trains on its shard
less its local evaluation rows, so never more than the shard) and to
``ServerConfig.max_client_examples``, and fixes the first count a client declares for the
whole run: a later join or profile declaring another is refused. Fixed counts are written to
``metrics.jsonl`` (``examples`` records) and read back when the run resumes, so they outlive
a coordinator restart for every round the journal committed.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence

from fedlora.common.errors import Refused, Status
from fedlora.proto.v1 import fedlora_pb2 as pb

MAX_KEYS = 256             # entries in one map a client sends: metrics, layer_seconds, extra
MAX_NAME_CHARS = 256       # a map key, an accelerator or accelerator name
MAX_TEXT_CHARS = 1024      # a string value of DeviceProfile.extra; a decline reason
MAX_PROFILE_BYTES = 64 * 1024  # a whole serialized DeviceProfile

EXAMPLES_RECORD = "examples"  # metrics.jsonl record fixing a client's count: client, num_examples


def _invalid(msg: str) -> Refused:
    return Refused(Status.INVALID_ARGUMENT, msg)


def _show(key: str) -> str:
    """A key as an error message may quote it: never more than a few dozen characters."""
    return repr(key if len(key) <= 40 else key[:40] + "...")


def _check_text(field: str, value: str, limit: int) -> None:
    if len(value) > limit:
        raise _invalid(f"{field}: {len(value)} characters, at most {limit}")


def _check_keys(field: str, keys: Iterable[str], count: int) -> None:
    if count > MAX_KEYS:
        raise _invalid(f"{field}: {count} keys, at most {MAX_KEYS}")
    for k in keys:
        if len(k) > MAX_NAME_CHARS:
            raise _invalid(f"{field}: key {_show(k)} has {len(k)} characters, at most {MAX_NAME_CHARS}")


def _check_number(field: str, value: float, minimum: float | None = None) -> None:
    if not math.isfinite(value):
        raise _invalid(f"{field}: {value} is not a finite number")
    if minimum is not None and value < minimum:
        raise _invalid(f"{field}: {value} is below {minimum:g}")


def check_numbers(field: str, values: Mapping[str, float]) -> None:
    """A map of named numbers (``metrics``, ``layer_seconds``): bounded keys, finite values."""
    _check_keys(field, values.keys(), len(values))
    for k, v in values.items():
        _check_number(f"{field}[{_show(k)}]", v)


def check_decline(reason: str) -> None:
    _check_text("decline_reason", reason, MAX_TEXT_CHARS)


def check_profile(p: pb.DeviceProfile, max_examples: int, field: str = "profile") -> None:
    """Sizes, finite non-negative rates, bounded maps and strings, and a count within the
    configured maximum (the per-client checks are :class:`ExampleCounts`')."""
    size = p.ByteSize()
    if size > MAX_PROFILE_BYTES:
        raise _invalid(f"{field}: {size} bytes, at most {MAX_PROFILE_BYTES}")
    _check_text(f"{field}.accelerator", p.accelerator, MAX_NAME_CHARS)
    _check_text(f"{field}.accelerator_name", p.accelerator_name, MAX_NAME_CHARS)
    for name in ("examples_per_second", "upload_bytes_per_second", "download_bytes_per_second"):
        _check_number(f"{field}.{name}", getattr(p, name), minimum=0.0)
    check_numbers(f"{field}.layer_seconds", p.layer_seconds)
    _check_keys(f"{field}.extra", p.extra.keys(), len(p.extra))
    for k, v in p.extra.items():
        _check_text(f"{field}.extra[{_show(k)}]", v, MAX_TEXT_CHARS)
    if p.num_examples > max_examples:
        raise _invalid(f"{field}.num_examples: {p.num_examples} exceeds max_client_examples={max_examples}")


class ExampleCounts:
    """The example count each client's updates are weighted with: declared once, checked
    against what the coordinator knows, then fixed for the run. Not thread-safe: the engine
    calls it under its condition."""

    def __init__(self, max_examples: int, shard_sizes: Sequence[int] = (),
                 fixed: Mapping[str, int] | None = None):
        """``shard_sizes``: the built-in data's shard of each partition (empty when clients
        bring their own data); ``fixed``: the counts of a resumed run."""
        self.max_examples = max_examples
        self.shard_sizes = list(shard_sizes)
        self.fixed: dict[str, int] = dict(fixed or {})

    def get(self, cid: str) -> int | None:
        """The vouched count of ``cid``, None until it has declared one."""
        return self.fixed.get(cid)

    def check(self, cid: str, partition: int, declared: int,
              field: str = "profile.num_examples") -> bool:
        """Refuses (INVALID_ARGUMENT) a count the coordinator cannot vouch for; True when
        ``declared`` is this client's first count (the caller records it, then :meth:`fix`)."""
        fixed = self.fixed.get(cid)
        if fixed is not None:
            if declared != fixed:
                raise _invalid(f"{field}: {declared}, but client {cid!r} declared {fixed} examples "
                               f"earlier and a client's example count is fixed for the run")
            return False
        if declared > self.max_examples:
            raise _invalid(f"{field}: {declared} exceeds max_client_examples={self.max_examples}")
        if self.shard_sizes and 0 <= partition < len(self.shard_sizes) \
                and declared > self.shard_sizes[partition]:
            raise _invalid(f"{field}: {declared} exceeds the {self.shard_sizes[partition]} examples "
                           f"of the shard the coordinator made for client {cid!r} (partition {partition})")
        return True

    def fix(self, cid: str, count: int) -> None:
        self.fixed[cid] = count


def fixed_counts(records: Iterable[Mapping]) -> dict[str, int]:
    """The counts a run's ``metrics.jsonl`` records fixed (for a resumed run)."""
    return {r["client"]: int(r["num_examples"]) for r in records if r.get("type") == EXAMPLES_RECORD}
