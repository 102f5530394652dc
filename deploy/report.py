"""``fedlora report RUN_DIR``: bytes per client and direction at every level, wire vs payload;
for runs whose strategy plans round times, predicted beside measured seconds.

Wire bytes are printed only where the client's interface carried its transfers alone; where it
carried other traffic too the cell says ``shared (why)``, and ``n/a (why)`` where nothing was
measured (common/netstat.py judges each transfer; server/runlog.py sums them)."""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path

from rich.console import Console
from rich.table import Table

from fedlora.server.runlog import (DIRECTIONS, IFACE, Record, iface_verdict, read_records, sum_bytes,
                                   summarize, unmeasured_text)


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
    by_client: dict[str, list[Record]] = defaultdict(list)
    for r in recs:
        by_client[r["client"]].append(r)
    t = Table(title=f"bytes by client and direction — {run_dir}")
    for col in ("client", "dir", "tensor MB", "payload MB", "protobuf MB", "wire MB", "payload/tensor",
                "protobuf/payload", "wire/payload", "Mbit/s"):
        t.add_column(col, justify="right")
    for cid, crecs in sorted(by_client.items()):
        sums = sum_bytes(crecs)
        for d in DIRECTIONS:
            s = sums[d]
            secs = sum((r[d].get("seconds") or 0.0) for r in crecs)
            rate = s["payload_bytes"] * 8 / secs / 1e6 if secs else None
            wire, verdict = s[IFACE], iface_verdict(crecs, d)
            t.add_row(cid, d, _mb(s["tensor_bytes"]), _mb(s["payload_bytes"]), _mb(s["protobuf_bytes"]),
                      _mb(wire) if wire is not None else unmeasured_text(verdict),
                      _ratio(s["payload_bytes"], s["tensor_bytes"]),
                      _ratio(s["protobuf_bytes"], s["payload_bytes"]),
                      _ratio(wire, s["payload_bytes"]) if wire is not None
                      else unmeasured_text(verdict, why=False),
                      "n/a" if rate is None else f"{rate:.2f}")
    console.print(t)
    _planner_table(records, recs, console)
    s = summarize(records)  # from the records: a folder's summary.json may predate the verdicts
    overall = [f"{d} " + (str(s["wire_overhead"][d]) if s["wire_overhead"][d] is not None
                          else unmeasured_text(s["iface"][d])) for d in DIRECTIONS]
    console.print("wire/payload overall: " + "; ".join(overall))
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
