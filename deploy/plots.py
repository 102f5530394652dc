"""``fedlora report RUN --plot``: PNG charts of a run from its ``metrics.jsonl``: the test metric
against the round, against the MB moved and against the seconds spent, and the bytes per client
and round.

The x axes are the ones a federated method is judged by: the same accuracy for fewer MB or
fewer seconds is the point of most methods here. MB are payload bytes (what the codecs made of
the update: the chunk data, without protobuf, gRPC, HTTP/2, TLS or TCP/IP framing), both
directions, all clients, every attempt of a round; seconds are the rounds' own (``seconds`` of
each round record), summed, so a resumed run's restart is not counted as training time.
Round 0 (the model before any update) is each curve's first point, at 0 MB and 0 s.

matplotlib is imported only here, with the Agg backend (files, no display): the coordinator
and clients never need it, so it is the ``plot`` extra, not a dependency of every process.
"""

from __future__ import annotations

import logging
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fedlora.deploy.live import metric_label
from fedlora.server.runlog import DIRECTIONS, Record, finite_number, read_records, sum_bytes

OUT = "plots"  # in the run folder, unless --out
MB = 1e6
INSTALL_HINT = "pip install 'fedlora[plot]' (matplotlib)"


class PlotError(ValueError):
    """A run folder the charts cannot be drawn from, or no matplotlib: one line for the CLI."""


@dataclass
class Curve:
    """The run's rounds as the charts need them (index i: the i-th round record)."""

    metric: str  # the record field drawn: test_accuracy, or test_loss where it has none
    label: str  # how the axis names it
    rounds: list[int] = field(default_factory=list)
    values: list[float] = field(default_factory=list)
    mb: list[float] = field(default_factory=list)  # cumulative payload MB after each round
    seconds: list[float] = field(default_factory=list)  # cumulative round seconds
    # client -> direction -> round -> payload bytes
    client_bytes: dict[str, dict[str, dict[int, int]]] = field(default_factory=dict)


def curve(records: list[Record]) -> Curve:
    """The round records in order, with the bytes and seconds spent up to each; raises
    PlotError when there is no round to draw."""
    rounds = [r for r in records if r["type"] == "round"]
    if not rounds:
        raise PlotError("no round records: the run has not evaluated its first model yet")
    metric = "test_accuracy" if any(finite_number(r.get("test_accuracy")) for r in rounds) else "test_loss"
    label = ("test loss" if metric == "test_loss" else
             "test exact match" if metric_label(records) == "exact match" else "test accuracy")
    by_round: dict[int, list[Record]] = defaultdict(list)
    per_client: dict[str, dict[str, dict[int, int]]] = defaultdict(lambda: {d: {} for d in DIRECTIONS})
    for rec in records:
        if rec["type"] == "client":
            by_round[rec["round"]].append(rec)
            for d in DIRECTIONS:
                got = (rec.get(d) or {}).get("payload_bytes") or 0
                per = per_client[rec["client"]][d]
                per[rec["round"]] = per.get(rec["round"], 0) + int(got)
    c = Curve(metric, label, client_bytes=dict(per_client))
    mb = secs = 0.0
    for r in rounds:
        if r["round"] > 0:
            sums = sum_bytes(by_round.get(r["round"], []))
            mb += sum(sums[d]["payload_bytes"] or 0 for d in DIRECTIONS) / MB
            secs += r.get("seconds") or 0.0
        value = r.get(metric)
        if not finite_number(value):
            continue
        c.rounds.append(r["round"])
        c.values.append(float(value))
        c.mb.append(mb)
        c.seconds.append(secs)
    if not c.rounds:
        raise PlotError(f"no round record holds a {metric} to draw")
    return c


def plot(run_dir: Path, out: Path | None = None) -> list[Path]:
    """Writes the charts of ``run_dir`` into ``out`` (default ``run_dir/plots``); returns them."""
    metrics = run_dir / "metrics.jsonl"
    if not metrics.is_file():
        raise PlotError(f"{metrics}: not found (is {run_dir} a run folder?)")
    try:
        c = curve(read_records(metrics))
    except PlotError as e:
        raise PlotError(f"{metrics}: {e}") from None
    try:
        import matplotlib
    except ImportError:
        raise PlotError(f"--plot needs matplotlib: {INSTALL_HINT}") from None
    logging.getLogger("matplotlib").setLevel(logging.WARNING)  # its font-cache notes tell a user nothing
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out = out or run_dir / OUT
    out.mkdir(parents=True, exist_ok=True)
    name = run_dir.resolve().name
    written = []
    for stem, draw in CHARTS.items():
        fig, ax = plt.subplots(figsize=(6, 4))
        draw(ax, c)
        fig.suptitle(name)
        written.append(_save(fig, out / f"{stem}.png", plt))
    fig, axes = plt.subplots(2, 2, figsize=(11, 7.5))  # all four at a glance (the README's)
    for ax, draw in zip(axes.flat, CHARTS.values()):
        draw(ax, c)
    fig.suptitle(name)
    written.append(_save(fig, out / "overview.png", plt))
    return written


def _metric_by(ax: Any, c: Curve, xs: list[float], xlabel: str, what: str) -> None:
    from matplotlib.ticker import MaxNLocator

    ax.plot(xs, c.values, marker="o")
    ax.set(xlabel=xlabel, ylabel=c.label, title=f"{c.label} by {what}")
    if xs is c.rounds:
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))  # no round 0.25
    ax.grid(alpha=0.3)


def _client_bars(ax: Any, c: Curve) -> None:
    """Grouped bars: a group per round, a bar per client, its payload MB up (solid) with the
    MB down stacked on top (hatched), so both directions and every client fit one chart."""
    clients = sorted(c.client_bytes)
    rounds = sorted({r for per in c.client_bytes.values() for d in DIRECTIONS for r in per[d]})
    width = 0.8 / max(1, len(clients))
    for i, cid in enumerate(clients):
        xs = [r - 0.4 + width * (i + 0.5) for r in rounds]
        up = [c.client_bytes[cid]["up"].get(r, 0) / MB for r in rounds]
        down = [c.client_bytes[cid]["down"].get(r, 0) / MB for r in rounds]
        bars = ax.bar(xs, up, width, label=cid)
        ax.bar(xs, down, width, bottom=up, color=bars.patches[0].get_facecolor() if bars.patches else None,
               alpha=0.45, hatch="//")
    ax.set(xlabel="round", ylabel="payload MB (solid: up, hatched: down)",
           title="bytes per client and round")
    ax.set_xticks(rounds)
    ax.margins(y=0.25)  # room for the legend above the bars
    if clients:
        ax.legend(fontsize="small", ncols=min(4, len(clients)), loc="upper left")
    ax.grid(axis="y", alpha=0.3)


# file stem -> how its chart is drawn on an axes
CHARTS: dict[str, Callable[[Any, Curve], None]] = {
    "metric-by-round": lambda ax, c: _metric_by(ax, c, c.rounds, "round", "round"),
    "metric-by-mb": lambda ax, c: _metric_by(ax, c, c.mb, "MB moved (payload, up + down, all clients)", "MB"),
    "metric-by-seconds": lambda ax, c: _metric_by(ax, c, c.seconds, "seconds (sum of round times)", "seconds"),
    "bytes-by-client": _client_bars,
}


def _save(fig: Any, path: Path, plt: Any) -> Path:
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
