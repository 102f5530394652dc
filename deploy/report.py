"""``fedlora report RUN_DIR``: bytes per client and direction at every level, wire vs payload;
for runs whose strategy plans round times, predicted beside measured seconds."""

from __future__ import annotations

import json
from collections import defaultdict
from pathlib import Path

from rich.console import Console
from rich.table import Table

from fedlora.server.runlog import LEVELS, read_records


def _mb(v: int | None) -> str:
    return "n/a" if v is None else f"{v / 1e6:.3f}"


def _ratio(a: int | None, b: int | None) -> str:
    return "n/a" if a is None or not b else f"{a / b:.4f}"


def report(run_dir: Path, console: Console | None = None) -> int:
    console = console or Console()
    records = read_records(run_dir / "metrics.jsonl")
    recs = [r for r in records if r["type"] == "client"]
    if not recs:
        console.print(f"no client records in {run_dir / 'metrics.jsonl'}")
        return 1
    sums: dict[tuple[str, str], dict[str, int | None]] = defaultdict(lambda: dict.fromkeys(LEVELS, 0))
    secs: dict[tuple[str, str], float] = defaultdict(float)
    for r in recs:
        for d in ("up", "down"):
            key = (r["client"], d)
            for lvl in LEVELS:
                v = r[d].get(lvl)
                if v is None and lvl == "iface_bytes" and r[d].get("payload_bytes"):
                    sums[key][lvl] = None
                elif v is not None and sums[key][lvl] is not None:
                    sums[key][lvl] += v
            secs[key] += r[d].get("seconds") or 0.0
    t = Table(title=f"bytes by client and direction — {run_dir}")
    for col in ("client", "dir", "tensor MB", "payload MB", "protobuf MB", "wire MB", "payload/tensor",
                "protobuf/payload", "wire/payload", "Mbit/s"):
        t.add_column(col, justify="right")
    for (cid, d), s in sorted(sums.items()):
        rate = s["payload_bytes"] * 8 / secs[(cid, d)] / 1e6 if secs[(cid, d)] else None
        t.add_row(cid, d, _mb(s["tensor_bytes"]), _mb(s["payload_bytes"]), _mb(s["protobuf_bytes"]),
                  _mb(s["iface_bytes"]), _ratio(s["payload_bytes"], s["tensor_bytes"]),
                  _ratio(s["protobuf_bytes"], s["payload_bytes"]), _ratio(s["iface_bytes"], s["payload_bytes"]),
                  "n/a" if rate is None else f"{rate:.2f}")
    console.print(t)
    _planner_table(records, recs, console)
    summary = run_dir / "summary.json"
    if summary.is_file():
        s = json.loads(summary.read_text())
        console.print(f"wire/payload overall: up {s.get('wire_overhead', {}).get('up')}, "
                      f"down {s.get('wire_overhead', {}).get('down')} "
                      "(n/a: interface counters not available, e.g. clients on shared loopback)")
    return 0


def _planner_table(records: list[dict], clients: list[dict], console: Console) -> None:
    """The planner's error: each client's predicted round seconds against its measured ones."""
    measured = {(r["round"], r["client"]): r.get("metrics", {}).get("round_seconds") for r in clients}
    t = Table(title="planned vs measured round seconds (per client)")
    for col in ("round", "client", "depth", "ranks", "predicted s", "uniform plan s", "measured s", "error"):
        t.add_column(col, justify="right")
    for rnd in records:
        planned = rnd.get("strategy", {}).get("planned") if rnd["type"] == "round" else None
        for cid, p in sorted((planned or {}).items()):
            m = measured.get((rnd["round"], cid))
            err = f"{(p['predicted_seconds'] - m) / m:+.0%}" if m else "n/a"
            t.add_row(str(rnd["round"]), cid, str(p["depth"]), " ".join(map(str, p["block_ranks"])),
                      f"{p['predicted_seconds']:.2f}", f"{p['uniform_predicted_seconds']:.2f}",
                      "n/a" if m is None else f"{m:.2f}", err)
    if t.row_count:
        console.print(t)
