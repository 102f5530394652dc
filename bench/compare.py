"""Runs several federated configurations on the default task and compares them.

    .venv/bin/python bench/compare.py [--suite methods|heterogeneous] [--seeds 0,1,2] [--rounds 5]
                                      [--only NAME,...] [--target ACC]

Each configuration is the README demo (deploy/demo.yaml: all-MiniLM-L6-v2, TREC, 4 clients,
Dirichlet 0.5, r=8, 30 local steps) run as a real local cluster with `fedlora run`, changed
only by the flags listed for it, once per seed (``--seed``: the data split, client sampling and
initialisation; one seed's point is noise). Prints, per configuration, the mean, standard
deviation and range over the seeds of the final accuracy, MB up and down (payload, summed over
clients and rounds) and wall time, and the clients' largest epsilon, then the same per seed;
writes results.json (a row per configuration and seed) and a plot of test accuracy against
cumulative MB (up + down), the mean over seeds with the seeds' range shaded. With --target, the
wall time and MB to first reach that accuracy per seed, and a plot against wall time (from the
initial evaluation, after every client joined, to the end of each round).

A (configuration, seed) already in the output folder's results.json is kept, not run again, so
a suite can be completed over several invocations; delete the row (or the file) to re-run it.

The heterogeneous suite runs on the netns cluster of deploy/clusters/four-links.yaml (links
100/20/5/1 Mbit/s, unequal CPU): it needs root and iproute2.

For a configuration whose plans carry predicted times (LEGEND), results.json also holds the
planner's predictions beside the measured seconds per client and round (``planner_rows``:
round, train, upload, download and overhead seconds, and the plan's depth) and its error per
round and per depth (``planner_error``), printed after the tables (fedlora.deploy.report),
per seed and pooled over the seeds.
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import subprocess
import sys
from pathlib import Path

from fedlora.deploy.report import planner_error, planner_lines, planner_rows

ROOT = Path(__file__).resolve().parents[1]

FFA = ["--strategy", "ffa-lora", "--lr", "0.01"]  # FFA-LoRA tolerates larger learning rates (paper)
NETNS = ["--cluster", "netns", "--spec", str(ROOT / "deploy" / "clusters" / "four-links.yaml")]
SUITES: dict[str, dict[str, list[str]]] = {
    # Issue 4: FedAvg-LoRA, FFA-LoRA, CE-LoRA at Dirichlet 0.5 and 0.1; FedAvg-LoRA vs FFA-LoRA
    # under DP-SGD at epsilon 3 and 1 (delta 1e-5, clip 1.0) at Dirichlet 0.5.
    "methods": {
        "fedavg-lora a=0.5": ["--strategy", "fedavg-lora"],
        "ffa-lora a=0.5": FFA,
        "ce-lora a=0.5": ["--strategy", "ce-lora"],
        "fedavg-lora a=0.1": ["--strategy", "fedavg-lora", "--dirichlet-alpha", "0.1"],
        "ffa-lora a=0.1": [*FFA, "--dirichlet-alpha", "0.1"],
        "ce-lora a=0.1": ["--strategy", "ce-lora", "--dirichlet-alpha", "0.1"],
        "fedavg-lora a=0.5 eps=3": ["--strategy", "fedavg-lora", "--dp-epsilon", "3"],
        "ffa-lora a=0.5 eps=3": [*FFA, "--dp-epsilon", "3"],
        "fedavg-lora a=0.5 eps=1": ["--strategy", "fedavg-lora", "--dp-epsilon", "1"],
        "ffa-lora a=0.5 eps=1": [*FFA, "--dp-epsilon", "1"],
    },
    # Issue 5: rank budgets on the heterogeneous cluster. Full FedAvg moves ~90 MB each way per
    # client and round; over the 1 Mbit/s link that is ~12 minutes a direction, so it runs on
    # loopback (its bytes and accuracy do not depend on the links; its time is not comparable).
    "heterogeneous": {
        "fedavg-lora r=8": [*NETNS, "--strategy", "fedavg-lora"],
        "hetlora r=8/8/4/2": [*NETNS, "--strategy", "hetlora", "--set", "ranks.cycle=[8,8,4,2]"],
        "flexlora r=8/8/4/2": [*NETNS, "--strategy", "flexlora", "--set", "ranks.cycle=[8,8,4,2]"],
        "legend": [*NETNS, "--strategy", "legend"],
        "sa-fedlora": [*NETNS, "--strategy", "sa-fedlora"],
        # full fine-tuning needs a BERT-sized learning rate: at the LoRA runs' 5e-3 it
        # collapses to the majority class (measured: 0.2565 after 5 rounds)
        "fedavg full lr=5e-5 (loopback)": ["--strategy", "fedavg", "--lr", "5e-5"],
    },
}


def slug(name: str) -> str:
    return "".join(c if c.isalnum() or c in "-." else "_" for c in name)


def run(name: str, flags: list[str], rounds: int, seed: int, out: Path) -> dict:
    run_dir = out / slug(name) / f"seed-{seed}"
    if run_dir.exists():  # an interrupted run: `fedlora run` would resume it, mixing two runs' times
        print(f"removing the unfinished {run_dir}", flush=True)
        shutil.rmtree(run_dir)
    cmd = [sys.executable, "-m", "fedlora.deploy.cli", "run", "--config", str(ROOT / "deploy" / "demo.yaml"),
           "--rounds", str(rounds), "--seed", str(seed), "--run-dir", str(run_dir), "--no-live", *flags]
    p = subprocess.run(cmd, capture_output=True, text=True)
    if p.returncode != 0:
        raise SystemExit(f"{name} (seed {seed}) failed:\n{p.stdout}\n{p.stderr}")
    return {**collect(name, flags, run_dir), "seed": seed}


def collect(name: str, flags: list[str], run_dir: Path) -> dict:
    """A finished run's row of results.json, from its summary.json and metrics.jsonl."""
    summary = json.loads((run_dir / "summary.json").read_text())
    rounds_ = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    curve, total, t0 = [], 0.0, None
    for rec in rounds_:
        if rec["type"] == "round":
            t0 = rec["time"] if t0 is None else t0  # round 0: every client joined, initial score
            total += (rec.get("up_mb") or 0) + (rec.get("down_mb") or 0)
            if "test_accuracy" in rec:  # a round not evaluated (evaluate_every) has no point
                curve.append((round(total, 4), rec["test_accuracy"], round(rec["time"] - t0, 2)))
    eps = [r["metrics"].get("dp_epsilon") for r in rounds_ if r["type"] == "client" and r["metrics"]]
    eps = [e for e in eps if e is not None]
    last = [r for r in rounds_ if r["type"] == "round"][-1]
    planner = planner_rows(rounds_)  # empty unless the strategy predicts round times
    return {"config": name, "flags": flags, "final_accuracy": summary["final_accuracy"],
            "personal_accuracy": last.get("personal_accuracy"), "evaluated_by": last.get("evaluated_by"),
            "mb_up": summary["mb_up"], "mb_down": summary["mb_down"], "wall_seconds": summary["elapsed_seconds"],
            "max_epsilon": max(eps) if eps else None, "curve": curve,
            **({"planner_rows": planner, "planner_error": planner_error(planner)} if planner else {})}


def reach(curve: list, target: float) -> tuple[float | None, float | None]:
    """(seconds, MB) at the first round whose accuracy is at least ``target``."""
    for mb, acc, t in curve:
        if acc >= target:
            return t, mb
    return None, None


def spread(values: list[float]) -> dict:
    """Mean, sample standard deviation (0 for one value), min and max of one figure over seeds."""
    return {"n": len(values), "mean": statistics.fmean(values),
            "std": statistics.stdev(values) if len(values) > 1 else 0.0, "min": min(values), "max": max(values)}


def fmt(s: dict, digits: int) -> str:
    """``mean ± std [min-max]``, the spread a single seed cannot show."""
    if s["n"] == 1:
        return f"{s['mean']:.{digits}f} (1 seed)"
    return f"{s['mean']:.{digits}f} ± {s['std']:.{digits}f} [{s['min']:.{digits}f}-{s['max']:.{digits}f}]"


def summarise(rows: list[dict], target: float | None) -> dict:
    """One configuration's figures over its seeds (rows: its results.json rows)."""
    out = {"config": rows[0]["config"], "seeds": [r["seed"] for r in rows],
           **{k: spread([r[k] for r in rows]) for k in ("final_accuracy", "mb_up", "mb_down", "wall_seconds")}}
    eps = [r["max_epsilon"] for r in rows if r["max_epsilon"] is not None]
    out["max_epsilon"] = max(eps) if eps else None
    if target is not None:
        reached = [reach(r["curve"], target) for r in rows]
        hit = [x for x in reached if x[0] is not None]
        out["reached"] = f"{len(hit)}/{len(rows)}"
        out["seconds_to_target"] = spread([t for t, _ in hit]) if hit else None
        out["mb_to_target"] = spread([mb for _, mb in hit]) if hit else None
    return out


def plot(groups: dict[str, list[dict]], path: Path, title: str, axis: int = 0) -> None:
    """Accuracy per round against ``axis`` (0: cumulative MB, 2: seconds), averaged over a
    configuration's seeds, the seeds' accuracy range shaded."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    for name, rows in groups.items():
        n = min(len(r["curve"]) for r in rows)
        xs = [statistics.fmean(r["curve"][i][axis] for r in rows) for i in range(n)]
        accs = [[r["curve"][i][1] for r in rows] for i in range(n)]
        line, = ax.plot(xs, [statistics.fmean(a) for a in accs], marker="o", markersize=3,
                        linestyle="--" if "eps" in name else "-", label=f"{name} ({len(rows)} seeds)")
        if len(rows) > 1:
            ax.fill_between(xs, [min(a) for a in accs], [max(a) for a in accs], color=line.get_color(), alpha=0.15)
    if axis == 0 and max(c[0] for rows in groups.values() for r in rows for c in r["curve"]) > 200:
        ax.set_xscale("symlog", linthresh=1.0)  # full FedAvg next to LoRA: orders of magnitude apart
    ax.set_xlabel("cumulative MB on the wire (payload, up + down, all clients; mean over seeds)" if axis == 0 else
                  "wall seconds since every client joined (mean over seeds)")
    ax.set_ylabel("global test accuracy (mean; shaded: range over seeds)")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--suite", choices=sorted(SUITES), default="methods")
    ap.add_argument("--seeds", default="0,1,2", help="comma-separated run seeds (default 0,1,2)")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--only", help="comma-separated configuration names")
    ap.add_argument("--out", default=None)
    ap.add_argument("--target", type=float, default=None, help="accuracy for time/MB-to-accuracy")
    args = ap.parse_args()
    suite = SUITES[args.suite]
    seeds = [int(x) for x in args.seeds.split(",")]
    out = Path(args.out or f"runs/bench-{args.suite}")
    out.mkdir(parents=True, exist_ok=True)
    names = args.only.split(",") if args.only else list(suite)
    unknown = [n for n in names if n not in suite]
    if unknown:
        raise SystemExit(f"--only: no configuration {unknown} in suite '{args.suite}' (has {list(suite)})")
    results_path = out / "results.json"
    rows = {(r["config"], r.get("seed", 0)): r
            for r in json.loads(results_path.read_text())} if results_path.is_file() else {}
    for name in names:
        for seed in seeds:
            if (name, seed) in rows:
                print(f"kept {name} seed {seed}: accuracy {rows[(name, seed)]['final_accuracy']:.4f}", flush=True)
                continue
            rows[(name, seed)] = run(name, suite[name], args.rounds, seed, out)
            print(f"done {name} seed {seed}: accuracy {rows[(name, seed)]['final_accuracy']:.4f} "
                  f"({rows[(name, seed)]['wall_seconds']:.0f} s)", flush=True)
            results_path.write_text(json.dumps(list(rows.values()), indent=1))
    groups = {n: sorted((r for (c, _), r in rows.items() if c == n), key=lambda r: r["seed"])
              for n in suite if any(c == n for c, _ in rows)}
    summaries = [summarise(g, args.target) for g in groups.values()]
    (out / "summary.json").write_text(json.dumps(summaries, indent=1))
    print("\nover seeds: mean ± std [min-max]")
    print("| config | seeds | global acc | MB up | MB down | seconds | max epsilon |")
    print("|---|---|---:|---:|---:|---:|---:|")
    for s in summaries:
        eps = "-" if s["max_epsilon"] is None else f"{s['max_epsilon']:.3f}"
        print(f"| {s['config']} | {','.join(map(str, s['seeds']))} | {fmt(s['final_accuracy'], 4)} | "
              f"{fmt(s['mb_up'], 3)} | {fmt(s['mb_down'], 3)} | {fmt(s['wall_seconds'], 1)} | {eps} |")
    print("\nper seed")
    print("| config | seed | global acc | personal acc | MB up | MB down | seconds | max epsilon |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    for g in groups.values():
        for r in g:
            eps = "-" if r["max_epsilon"] is None else f"{r['max_epsilon']:.3f}"
            pers = "-" if r.get("personal_accuracy") is None else f"{r['personal_accuracy']:.4f}"
            print(f"| {r['config']} | {r['seed']} | {r['final_accuracy']:.4f} | {pers} | {r['mb_up']:.3f} | "
                  f"{r['mb_down']:.3f} | {r['wall_seconds']:.1f} | {eps} |")
    plot(groups, out / "accuracy_vs_mb.png", f"suite '{args.suite}': accuracy against bytes")
    print(f"plot: {out / 'accuracy_vs_mb.png'}")
    if args.target is not None:
        print(f"\nto accuracy {args.target:g}, over the seeds that reached it: mean ± std [min-max]")
        print("| config | reached | seconds | MB | per seed: seconds / MB |")
        print("|---|---:|---:|---:|---|")
        for s, g in zip(summaries, groups.values()):
            per = "; ".join(f"{r['seed']}: " + ("-" if t is None else f"{t:.1f} / {mb:.3f}")
                            for r in g for t, mb in [reach(r["curve"], args.target)])
            t, mb = s["seconds_to_target"], s["mb_to_target"]
            print(f"| {s['config']} | {s['reached']} | {'-' if t is None else fmt(t, 1)} | "
                  f"{'-' if mb is None else fmt(mb, 3)} | {per} |")
        plot(groups, out / "accuracy_vs_time.png", f"suite '{args.suite}': accuracy against time", axis=2)
        print(f"plot: {out / 'accuracy_vs_time.png'}")
    for name, g in groups.items():
        if any(r.get("planner_rows") for r in g):
            print_planner(name, g)


def print_planner(name: str, rows: list[dict]) -> None:
    """A configuration's predicted against measured seconds per seed, client and round, then
    the error per round and per depth, per seed and pooled over its seeds."""
    print(f"\nplanner of '{name}': predicted / measured seconds (round; train)")
    print("| seed | round | client | depth | predicted s | measured s | error | predicted train s | measured train s |")
    print("|---:|---:|---|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        for x in r.get("planner_rows") or []:
            p, m = x["predicted"], x["measured"]
            pt, mt = p.get("train_seconds"), m.get("train_seconds")
            print(f"| {r['seed']} | {x['round']} | {x['client']} | {x['depth'] if x['depth'] is not None else '-'} | "
                  f"{p['round_seconds']:.2f} | {m['round_seconds']:.2f} | "
                  f"{(p['round_seconds'] - m['round_seconds']) / m['round_seconds']:+.0%} | "
                  f"{'-' if pt is None else f'{pt:.2f}'} | {'-' if mt is None else f'{mt:.2f}'} |")
    print("\nplanner error ((predicted - measured) / measured; bias < 0: under-predicted)")
    for r in rows:
        if r.get("planner_rows"):
            print(f"\nseed {r['seed']}")
            print("\n".join(planner_lines(r["planner_error"])))
    pooled = [x for r in rows for x in r.get("planner_rows") or []]
    print(f"\npooled over seeds {','.join(str(r['seed']) for r in rows if r.get('planner_rows'))}")
    print("\n".join(planner_lines(planner_error(pooled))))


if __name__ == "__main__":
    main()
