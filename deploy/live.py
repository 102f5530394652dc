"""The live round table, drawn from the run's ``metrics.jsonl`` (so it works for any
coordinator, local or remote, that writes a run folder)."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.live import Live
from rich.table import Table

from fedlora.server.runlog import read_records, unmeasured_text


def _fmt(v: Any, spec: str) -> str:
    return "-" if v is None else format(v, spec)


def metric_label(records: list[dict[str, Any]]) -> str:
    """What ``test_accuracy`` measures: a generative task's rounds carry a perplexity, and its
    metric is the exact match of generated answers."""
    return "exact match" if any("test_perplexity" in r for r in records) else "acc"


class LiveTable:
    def __init__(self, run_dir: Path, enabled: bool = True):
        self.run_dir = run_dir
        self.console = Console(stderr=False)
        self.enabled = enabled and self.console.is_terminal
        self._live: Live | None = None
        self._printed = 0

    def start(self, title: str) -> None:
        self.title = title
        self.console.print(f"[bold]fedlora run[/bold]: {title}")
        if self.enabled:
            self._live = Live(self._table([]), console=self.console, refresh_per_second=2)
            self._live.start()

    def _rows(self, records: list[dict[str, Any]]) -> list[list[str]]:
        rows: dict[int, dict[str, Any]] = {}
        for rec in records:
            t, rnd = rec["type"], rec.get("round")
            if t == "round_start":
                rows[rnd] = {"planned": rec["planned"], "finished": 0, "state": "training"}
            elif t == "upload" and rnd in rows:
                rows[rnd]["finished"] = rec["finished"]
            elif t == "round":
                rows[rnd] = {**rows.get(rnd, {}), **rec, "finished": rec.get("accepted"),
                             "state": "done"}
            elif t == "round_failed" and rnd in rows:
                rows[rnd]["state"] = "failed"
        out = []
        for rnd in sorted(rows):
            r = rows[rnd]
            out.append([str(rnd), f"{_fmt(r.get('finished'), 'd')}/{_fmt(r.get('planned'), 'd')}",
                        _fmt(r.get("train_loss"), ".4f"), _fmt(r.get("test_accuracy"), ".4f"),
                        _fmt(r.get("test_perplexity"), ".3f"), _fmt(r.get("up_mb"), ".3f"), _fmt(r.get("down_mb"), ".3f"),
                        _fmt(r.get("up_wire_mb"), ".3f"), _fmt(r.get("down_wire_mb"), ".3f"),
                        _fmt(r.get("seconds"), ".1f"), r.get("state", "")])
        return out

    def _table(self, rows: list[list[str]], label: str = "acc") -> Table:
        t = Table(title="rounds")
        for col in ("round", "clients", "train loss", f"test {label}", "test ppl", "MB up", "MB down",
                    "wire MB up", "wire MB down", "seconds", ""):
            t.add_column(col, justify="right")
        for row in rows:
            t.add_row(*row)
        return t

    def refresh(self) -> None:
        records = read_records(self.run_dir / "metrics.jsonl")
        rows, label = self._rows(records), metric_label(records)
        if self._live is not None:
            self._live.update(self._table(rows, label))
            return
        for row in rows:  # plain output: one line per finished round
            if int(row[0]) >= self._printed and row[-1] == "done":
                ppl = f", ppl {row[4]}" if row[4] != "-" else ""
                wire = f", wire MB up {row[7]}, down {row[8]}" if row[7] != "-" else ""
                print(f"round {row[0]}: clients {row[1]}, train loss {row[2]}, test {label} {row[3]}{ppl}, "
                      f"MB up {row[5]}, MB down {row[6]}{wire}, {row[9]}s", flush=True)
                self._printed = int(row[0]) + 1

    def stop(self) -> None:
        if self._live is not None:
            self.refresh()
            self._live.stop()
            self._live = None

    def print_summary(self) -> None:
        path = self.run_dir / "summary.json"
        if not path.is_file():
            print(f"no summary was written; logs are in {self.run_dir / 'logs'}", file=sys.stderr)
            return
        s = json.loads(path.read_text())
        b = s["bytes"]
        print(f"status: {s['status']}" + (f" ({s['error']})" if s.get("error") else ""))
        metric = "exact match" if s.get("final_perplexity") is not None else "accuracy"
        ppl = f", perplexity {s['final_perplexity']:.3f}" if s.get("final_perplexity") is not None else ""
        print(f"rounds: {s['rounds_completed']}/{s['rounds_requested']}, final test {metric}: "
              f"{_fmt(s['final_accuracy'], '.4f')}{ppl}, wall time {s['elapsed_seconds']:.1f}s, "
              f"first round {_fmt(s.get('seconds_to_first_round'), '.1f')}s after the coordinator's launch")
        for d in ("up", "down"):
            wire = b[d].get("iface_bytes")  # not a number: the verdict says why (shared, n/a)
            wire_text = (format(wire, ",") if wire is not None
                         else unmeasured_text((s.get("iface") or {}).get(d)))
            print(f"bytes {d:>4}: tensor {b[d]['tensor_bytes']:,}  payload {b[d]['payload_bytes']:,}  "
                  f"protobuf {b[d]['protobuf_bytes']:,}  wire {wire_text}")
        if s.get("adapter"):
            print(f"adapter: {s['adapter']}")
        print(f"summary: {path}")
