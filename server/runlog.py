"""The run folder: resolved config, ``metrics.jsonl`` (append-only), ``summary.json``."""

from __future__ import annotations

import json
import os
import threading
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

LEVELS = ("tensor_bytes", "payload_bytes", "grpc_bytes", "iface_bytes")


class RunLog:
    def __init__(self, run_dir: Path, keep: tuple[int, int] | None = None):
        """Appends to ``metrics.jsonl``; with ``keep`` (bytes, records), the file is first cut
        back to that prefix: a resumed run drops what the crashed one wrote after its last
        journaled round (server/journal.py), so no round is recorded twice."""
        self.dir = run_dir
        self.dir.mkdir(parents=True, exist_ok=True)
        self.metrics_path = self.dir / "metrics.jsonl"
        self._lock = threading.Lock()
        self._f = self.metrics_path.open("a", encoding="utf-8")
        self.count = 0
        if keep is not None:
            self._f.truncate(keep[0])
            self.count = keep[1]
        self.t0 = time.time()

    def write(self, record_type: str, **fields: Any) -> dict[str, Any]:
        rec = {"type": record_type, "time": round(time.time() - self.t0, 3), **fields}
        with self._lock:
            self._f.write(json.dumps(rec, default=_jsonable) + "\n")
            self._f.flush()
            self.count += 1
        return rec

    def sync(self) -> tuple[int, int]:
        """Makes every record so far durable; returns (bytes, records) of the file."""
        with self._lock:
            self._f.flush()
            os.fsync(self._f.fileno())
            return os.fstat(self._f.fileno()).st_size, self.count

    def write_json(self, name: str, obj: Any) -> Path:
        path = self.dir / name
        tmp = path.with_suffix(path.suffix + ".tmp")
        tmp.write_text(json.dumps(obj, indent=2, default=_jsonable) + "\n", encoding="utf-8")
        tmp.replace(path)
        return path

    def close(self) -> None:
        with self._lock:
            self._f.close()


def _jsonable(o: Any) -> Any:
    if isinstance(o, Path):
        return str(o)
    if isinstance(o, float):
        return o
    return str(o)


def summarize(records: list[dict[str, Any]]) -> dict[str, Any]:
    """Totals from the metrics records: per direction and level, per client, per round."""
    rounds = [r for r in records if r["type"] == "round" and r["round"] > 0]
    clients = [r for r in records if r["type"] == "client"]
    totals: dict[str, dict[str, int | None]] = {d: dict.fromkeys(LEVELS, 0) for d in ("up", "down")}
    per_client: dict[str, dict[str, dict[str, int | None]]] = defaultdict(
        lambda: {d: dict.fromkeys(LEVELS, 0) for d in ("up", "down")})
    for rec in clients:
        for d in ("up", "down"):
            for lvl in LEVELS:
                v = (rec.get(d) or {}).get(lvl)
                if v is None:  # a level not measured (interface bytes on shared loopback)
                    if lvl == "iface_bytes" and rec.get("status") == "accepted":
                        totals[d][lvl] = per_client[rec["client"]][d][lvl] = None
                    continue
                if totals[d][lvl] is not None:
                    totals[d][lvl] += int(v)
                if per_client[rec["client"]][d][lvl] is not None:
                    per_client[rec["client"]][d][lvl] += int(v)
    initial = next((r for r in records if r["type"] == "round" and r["round"] == 0), {})
    last = rounds[-1] if rounds else {}
    return {
        "rounds_completed": len(rounds),
        "resumes": sum(1 for r in records if r["type"] == "resume"),
        "initial_accuracy": initial.get("test_accuracy"),
        "final_accuracy": last.get("test_accuracy"),
        "final_loss": last.get("test_loss"),
        "best_accuracy": max((r["test_accuracy"] for r in rounds), default=None),
        "accuracy_by_round": [r["test_accuracy"] for r in rounds],
        "bytes": totals,
        "mb_up": totals["up"]["payload_bytes"] / 1e6,
        "mb_down": totals["down"]["payload_bytes"] / 1e6,
        "wire_overhead": {d: (round(totals[d]["iface_bytes"] / totals[d]["payload_bytes"], 4)
                              if totals[d]["iface_bytes"] and totals[d]["payload_bytes"] else None)
                          for d in ("up", "down")},
        "per_client": dict(per_client),
        "wall_seconds": round(sum(r.get("seconds", 0.0) for r in rounds), 3),
    }


def read_records(path: Path) -> list[dict[str, Any]]:
    if not path.is_file():
        return []
    out = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            out.append(json.loads(line))
        except ValueError:
            continue  # a line being written concurrently
    return out
