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
    _planner_table(records, console)
    s = summarize(records)  # from the records: a folder's summary.json may predate the verdicts
    overall = [f"{d} " + (str(s["wire_overhead"][d]) if s["wire_overhead"][d] is not None
                          else unmeasured_text(s["iface"][d])) for d in DIRECTIONS]
    console.print("wire/payload overall: " + "; ".join(overall))
    return 0


def planner_rows(records: list[dict]) -> list[dict]:
    """Each planned client's predicted round beside its measured one, per round and attempt:
    ``{"round", "attempt", "client", "depth", "predicted": {...}, "measured": {...}}`` with
    seconds by part (``round_seconds``, ``train_seconds``, ``upload_seconds``,
    ``download_seconds``, ``overhead_seconds``; server/records.py). Only clients whose update
    was accepted and who reported their round time. From the client records' ``predicted`` and
    ``measured``; a run recorded before those existed gives the round record's
    ``strategy.planned[client].predicted_seconds`` against the report's ``round_seconds``
    (round seconds only). ``depth``, ``block_ranks`` and ``uniform_predicted_seconds``: from
    the round record's ``strategy.planned`` where the strategy logs one (LEGEND), else None."""
    planned: dict[tuple[int, int], dict] = {}
    for r in records:
        if r.get("type") == "round" and isinstance(r.get("strategy"), dict):
            planned[(r["round"], r.get("attempt", 0))] = r["strategy"].get("planned") or {}
    rows = []
    for r in records:
        if r.get("type") != "client" or r.get("status") != "accepted":
            continue
        plan = planned.get((r["round"], r.get("attempt", 0)), {}).get(r["client"], {})
        predicted, measured = r.get("predicted"), r.get("measured")
        if predicted is None and plan.get("predicted_seconds") is not None:  # an older run
            predicted = {"round_seconds": plan["predicted_seconds"]}
            measured = {"round_seconds": (r.get("metrics") or {}).get("round_seconds")}
        if not predicted or not measured or not measured.get("round_seconds"):
            continue
        rows.append({"round": r["round"], "attempt": r.get("attempt", 0), "client": r["client"],
                     "depth": plan.get("depth"), "block_ranks": plan.get("block_ranks"),
                     "uniform_predicted_seconds": plan.get("uniform_predicted_seconds"),
                     "predicted": predicted, "measured": measured})
    return sorted(rows, key=lambda x: (x["round"], x["attempt"], x["client"]))


def _errors(rows: list[dict], part: str) -> dict | None:
    """(predicted - measured) / measured of ``part`` over ``rows``: mean (the bias; negative:
    under-predicted), mean and max of its absolute value; None where no row has both."""
    errs = [(x["predicted"][part] - x["measured"][part]) / x["measured"][part] for x in rows
            if x["predicted"].get(part) is not None and x["measured"].get(part)]
    if not errs:
        return None
    return {"n": len(errs), "mean": round(sum(errs) / len(errs), 4),
            "mean_abs": round(sum(abs(e) for e in errs) / len(errs), 4),
            "max_abs": round(max(abs(e) for e in errs), 4)}


def planner_error(rows: list[dict]) -> dict:
    """The planner's relative error on round seconds and on training seconds (the profile
    refresh's part), over all rows, per round and per depth (rows of :func:`planner_rows`)."""

    def group(key: str) -> dict:
        out: dict = {}
        for k in sorted({x[key] for x in rows if x[key] is not None}):
            sub = [x for x in rows if x[key] == k]
            out[str(k)] = {"round": _errors(sub, "round_seconds"), "train": _errors(sub, "train_seconds")}
        return out

    return {"all": {"round": _errors(rows, "round_seconds"), "train": _errors(rows, "train_seconds")},
            "per_round": group("round"), "per_depth": group("depth")}


def _pct(e: dict | None, key: str) -> str:
    return "n/a" if e is None else f"{e[key]:+.0%}" if key == "mean" else f"{e[key]:.0%}"


def planner_lines(err: dict) -> list[str]:
    """The planner's error as markdown table lines: one row per round, per depth, and all."""
    lines = ["| group | n | round s: bias | mean abs | max abs | train s: bias | mean abs | max abs |",
             "|---|---:|---:|---:|---:|---:|---:|---:|"]
    groups = ([(f"round {k}", v) for k, v in err["per_round"].items()]
              + [(f"depth {k}", v) for k, v in err["per_depth"].items()] + [("all", err["all"])])
    for name, g in groups:
        n = (g["round"] or {}).get("n", 0)
        lines.append(f"| {name} | {n} | " + " | ".join(
            _pct(g[part], key) for part in ("round", "train") for key in ("mean", "mean_abs", "max_abs")) + " |")
    return lines


def _planner_table(records: list[dict], console: Console) -> None:
    """The planner's error: each client's predicted round seconds against its measured ones,
    then the error per round and per depth."""
    rows = planner_rows(records)
    if not rows:
        return
    t = Table(title="planned vs measured seconds (per client and round)")
    for col in ("round", "client", "depth", "ranks", "predicted s", "measured s", "error", "uniform plan s",
                "predicted train s", "measured train s", "train error"):
        t.add_column(col, justify="right")

    def cell(x: dict, part: str) -> tuple[str, str, str]:
        p, m = x["predicted"].get(part), x["measured"].get(part)
        err = f"{(p - m) / m:+.0%}" if p is not None and m else "n/a"
        return ("n/a" if p is None else f"{p:.2f}", "n/a" if m is None else f"{m:.2f}", err)

    for x in rows:
        u = x["uniform_predicted_seconds"]
        t.add_row(str(x["round"]), x["client"], "n/a" if x["depth"] is None else str(x["depth"]),
                  " ".join(map(str, x["block_ranks"] or [])) or "n/a", *cell(x, "round_seconds"),
                  "n/a" if u is None else f"{u:.2f}", *cell(x, "train_seconds"))
    console.print(t)
    console.print("planner error ((predicted - measured) / measured; bias < 0: under-predicted):")
    for line in planner_lines(planner_error(rows)):
        console.print(line, markup=False, highlight=False)
