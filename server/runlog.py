"""The run folder: resolved config, ``metrics.jsonl`` (append-only), ``summary.json``.

The folder is checked before any work (:func:`fedlora.common.storage.prepare_dir`); JSON files
are written atomically; a record the disk cannot take ends the run (``on_error``), after the
reserve is given back so the summary still fits.
"""

from __future__ import annotations

import json
import logging
import math
import threading
import time
from collections import defaultdict
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from fedlora.common import netstat
from fedlora.common.storage import Appender, Reserve, StorageError, prepare_dir, write_atomic

# the byte levels of a transfer, each named for what it counts (common/wire/stats.py,
# common/netstat.py): raw tensors, chunk data, serialized protobuf messages, interface counters
LEVELS = ("tensor_bytes", "payload_bytes", "protobuf_bytes", "iface_bytes")
IFACE = LEVELS[-1]  # a number only where the interface carried the transfer alone (iface_fields)
# keys of run folders written before a level was renamed ("grpc_bytes" never counted gRPC's
# framing, only the protobuf messages): read_records maps them, so no reader knows the old names
RENAMED = {"grpc_bytes": "protobuf_bytes", "client_up_grpc_bytes": "client_up_protobuf_bytes",
           "client_down_grpc_bytes": "client_down_protobuf_bytes"}
DIRECTIONS = ("up", "down")

Record = dict[str, Any]

log = logging.getLogger("fedlora.server")


class RunLog:
    def __init__(self, run_dir: Path, keep: tuple[int, int] | None = None):
        """Appends to ``metrics.jsonl``; with ``keep`` (bytes, records), the file is first cut
        back to that prefix: a resumed run drops what the crashed one wrote after its last
        journaled round (server/journal.py), so no round is recorded twice."""
        self.dir = prepare_dir(run_dir, "run folder")
        self.reserve = Reserve(self.dir)
        self.metrics_path = self.dir / "metrics.jsonl"
        self._lock = threading.Lock()
        self._f = Appender(self.metrics_path)
        self.count = 0
        if keep is not None:
            self._f.truncate(keep[0])
            self.count = keep[1]
        self.t0 = time.time()
        self.error = ""  # why the folder stopped taking records ("" while it takes them)
        self.on_error: Callable[[str], None] | None = None  # told once, outside the lock
        # told each record the file took, in the file's order (under the lock): views of the
        # records (the TensorBoard event files, server/eventfiles.py; the Prometheus metrics,
        # server/metrics.py); one that raises is logged and dropped: a view never stops the run
        self.observers: list[Callable[[Record], None]] = []

    def write(self, record_type: str, **fields: Any) -> dict[str, Any]:
        """Appends a record and tells the observers; if the disk refuses it, the run folder
        has failed (:meth:`fail`); records after that are dropped and the caller goes on."""
        rec = {"type": record_type, "time": round(time.time() - self.t0, 3), **fields}
        line = (json.dumps(rec, default=_jsonable) + "\n").encode("utf-8")
        with self._lock:
            if self.error:
                return rec
            try:
                self._f.append(line)
                self.count += 1
            except StorageError as e:
                why = f"run folder {self.dir}: cannot write {self.metrics_path.name}: {e.why}"
            else:
                self._tell(rec)
                return rec
        self.fail(why)
        return rec

    def _tell(self, rec: Record) -> None:
        """Every observer sees the record (under the lock, so in the file's order); a failing
        observer is logged once and dropped: a view of the run never stops it."""
        for fn in list(self.observers):
            try:
                fn(rec)
            except Exception:
                self.observers.remove(fn)
                log.exception("run log observer %r failed on a %r record: dropped", fn, rec["type"])

    def fail(self, why: str) -> None:
        """The run folder cannot be written: give back the reserve (room for the summary and
        the log's reason), then tell ``on_error``, once; the first reason stands."""
        with self._lock:
            if self.error:
                return
            self.error = why
        self.reserve.release()
        log.error("%s", why)
        if self.on_error is not None:
            self.on_error(why)

    def sync(self) -> tuple[int, int]:
        """Makes every record so far durable; returns (bytes, records) of the file."""
        with self._lock:
            return self._f.sync(), self.count

    def write_json(self, name: str, obj: Any) -> Path:
        """Writes ``name`` whole or not at all; raises StorageError naming the path."""
        return write_atomic(self.dir / name, json.dumps(obj, indent=2, default=_jsonable) + "\n")

    def close(self) -> None:
        with self._lock:
            self._f.close()
        self.reserve.release()


def _jsonable(o: Any) -> Any:
    if isinstance(o, Path):
        return str(o)
    if isinstance(o, float):
        return o
    return str(o)


def finite_number(v: Any) -> bool:
    """A record value a chart can draw: a finite int or float (not a bool, a None, a NaN
    score); the event files and the plots skip the others."""
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def iface_fields(counted: int | None, verdict: netstat.Verdict) -> Record:
    """A transfer's interface level as its record holds it: ``iface_bytes`` only where the
    interface carried the transfer alone (else None, so no sum, chart or metric counts other
    traffic as the client's), the verdict and its reason, and the counter as read."""
    return {IFACE: counted if verdict.exclusive else None, "iface_counted_bytes": counted,
            "iface_verdict": verdict.kind, "iface_reason": verdict.reason}


def _moved(rec: Record, direction: str) -> bool:
    """Whether a record's transfer moved payload: only those have an interface level (a client
    that already held the round's global state downloaded nothing)."""
    return bool((rec.get(direction) or {}).get("payload_bytes"))


def sum_bytes(clients: Iterable[Record]) -> dict[str, dict[str, int | None]]:
    """Bytes of ``client`` records summed per direction and level. The interface level is None
    unless every transfer that moved payload has its own (a shared interface, loopback, a client
    that never reported), as a partial sum, or one with other traffic in it, would mislead;
    :func:`iface_verdict` says why."""
    totals: dict[str, dict[str, int | None]] = {d: dict.fromkeys(LEVELS, 0) for d in DIRECTIONS}
    for rec in clients:
        for d in DIRECTIONS:
            for lvl in LEVELS:
                v = (rec.get(d) or {}).get(lvl)
                if v is None:  # a level not measured
                    if lvl == IFACE and _moved(rec, d):
                        totals[d][lvl] = None
                    continue
                if totals[d][lvl] is not None:
                    totals[d][lvl] += int(v)
    return totals


def iface_verdict(clients: Iterable[Record], direction: str) -> dict[str, str] | None:
    """The interface level's verdict over the transfers :func:`sum_bytes` counts for it (those
    that moved payload): the worst of theirs (:data:`~fedlora.common.netstat.VERDICTS`), with
    the first such transfer's reason, its round and how many had it; None when none moved."""
    moved = [rec for rec in clients if _moved(rec, direction)]
    for kind in netstat.VERDICTS:
        hits = [rec for rec in moved if rec[direction].get("iface_verdict") == kind]
        if hits:
            why = hits[0][direction].get("iface_reason") or "no reason recorded"
            return {"verdict": kind, "reason": f"{why}; round {hits[0].get('round')}, "
                                               f"{len(hits)} of {len(moved)} transfers"}
    return None


def unmeasured_text(verdict: dict[str, str] | None, why: bool = True) -> str:
    """What a report prints for an interface level that is not a number (an :func:`iface_verdict`):
    ``shared (reason)`` where other traffic is in the counters, ``n/a (reason)`` where nothing was
    measured; without ``why``, the word alone (a narrow column)."""
    word = "shared" if verdict is not None and verdict["verdict"] == netstat.SHARED else "n/a"
    if not why:
        return word
    return f"{word} ({verdict['reason'] if verdict is not None else 'no transfer'})"


def summarize(records: list[dict[str, Any]]) -> dict[str, Any]:
    """Totals from the metrics records: per direction and level, per client, per round."""
    rounds = [r for r in records if r["type"] == "round" and r["round"] > 0]
    clients = [r for r in records if r["type"] == "client"]
    totals = sum_bytes(clients)
    by_client: dict[str, list[Record]] = defaultdict(list)
    for rec in clients:
        by_client[rec["client"]].append(rec)
    per_client = {cid: sum_bytes(recs) for cid, recs in by_client.items()}
    iface = {cid: {d: iface_verdict(recs, d) for d in DIRECTIONS} for cid, recs in by_client.items()}
    initial = next((r for r in records if r["type"] == "round" and r["round"] == 0), {})
    last = rounds[-1] if rounds else {}
    return {
        "rounds_completed": len(rounds),
        "resumes": sum(1 for r in records if r["type"] == "resume"),
        "initial_accuracy": initial.get("test_accuracy"),
        "final_accuracy": last.get("test_accuracy"),
        "final_loss": last.get("test_loss"),
        "final_perplexity": last.get("test_perplexity"),
        # rounds not evaluated (``evaluate_every``) have no test figures: None in the list
        "best_accuracy": max((r["test_accuracy"] for r in rounds if "test_accuracy" in r), default=None),
        "accuracy_by_round": [r.get("test_accuracy") for r in rounds],
        "bytes": totals,
        "mb_up": totals["up"]["payload_bytes"] / 1e6,
        "mb_down": totals["down"]["payload_bytes"] / 1e6,
        "wire_overhead": {d: (round(totals[d][IFACE] / totals[d]["payload_bytes"], 4)
                              if totals[d][IFACE] and totals[d]["payload_bytes"] else None)
                          for d in DIRECTIONS},
        # why the interface level is, or is not, a number: overall, and per client
        "iface": {d: iface_verdict(clients, d) for d in DIRECTIONS},
        "per_client": per_client,
        "per_client_iface": iface,
        "wall_seconds": round(sum(r.get("seconds", 0.0) for r in rounds), 3),
        # launch of the coordinator process to its first round planned (start-up: imports, the
        # model and data, the clients' joins); a resumed run's is its last process's
        "seconds_to_first_round": _first_round_seconds(records),
    }


def _first_round_seconds(records: list[Record]) -> float | None:
    """Seconds from the launch of the last coordinator process (the one after the last resume)
    to the first round it planned: its start-up, imports, model, data and the clients' joins."""
    last_resume = max((i for i, r in enumerate(records) if r["type"] == "resume"), default=-1)
    return next((r.get("since_launch_s") for r in records[last_resume + 1:]
                 if r["type"] == "round_start"), None)


def read_records(path: Path) -> list[dict[str, Any]]:
    """The records of ``metrics.jsonl``, in today's names (:func:`current`), so a run folder
    written by an older coordinator reads like a new one everywhere."""
    if not path.is_file():
        return []
    out = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            out.append(current(json.loads(line)))
        except ValueError:
            continue  # a line being written concurrently
    return out


def current(rec: Record) -> Record:
    """``rec`` as today's coordinator writes it (in place): the keys of :data:`RENAMED` under
    their new names, and a transfer recorded before interface verdicts judged from the report
    it kept, as a new one would be. The one place that knows a client record's old forms."""
    if rec.get("type") != "client":
        return rec
    for part in (rec.get("up"), rec.get("down"), rec.get("metrics")):
        if isinstance(part, dict):
            for old in RENAMED.keys() & part.keys():
                part[RENAMED[old]] = part.pop(old)
    for d in DIRECTIONS:
        part = rec.get(d)
        if isinstance(part, dict) and "iface_verdict" not in part:
            part.update(iface_fields(*netstat.assess(d, rec.get("metrics") or {})))
    return rec
