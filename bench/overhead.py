"""Overhead beyond compute: how much longer a run takes than its slowest clients' training.

    sudo .venv/bin/python bench/overhead.py [--seeds 0,1,2] [--rounds 5] [--out DIR]

The task of the Flower 1.42 deployment-mode comparison in issue 15: all-MiniLM-L6-v2 on TREC,
4 clients each in its own network namespace (`fedlora run --cluster netns`, links unshaped),
LoRA r=8 on query/value + the classifier head, 1 local epoch of batch 16 at lr 5e-4, a 20%
test split, Dirichlet(0.5) shards, fp32 both ways (no codec), 5 rounds, FedAvg-LoRA.

Per seed it prints the wall time of the whole `fedlora run` command, the sum over rounds of the
slowest client's local training (`train_seconds` each client reports), their ratio (the
overhead beyond compute; 1.0 is none), the coordinator's launch to its first round planned
(start-up: imports, model, data, the clients' joins), and per round the round's seconds
against its slowest training. Needs root (network namespaces) and iproute2. Results go to
bench/overhead-result.json (or --out).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

from fedlora.server.runlog import read_records

ROOT = Path(__file__).resolve().parents[1]
CLIENTS = 4
CONFIG = {
    "strategy": "fedavg-lora", "model": "default", "clients": CLIENTS, "min_clients": CLIENTS,
    "data": {"dataset": "trec", "dirichlet_alpha": 0.5, "test_fraction": 0.2},
    "adapter": {"rank": 8, "alpha": 16, "target_modules": ["query", "value"],
                "modules_to_save": ["classifier"]},
    "training": {"epochs": 1, "max_steps": 0, "batch_size": 16, "learning_rate": 5e-4},
    "codec": {"upload": [], "download": []},
}
SPEC = {"subnet": "10.213.9.0/24", "coordinator": {},
        "clients": [{"id": f"client-{i}"} for i in range(CLIENTS)]}


def records(run_dir: Path, kind: str) -> list[dict]:
    return [r for r in read_records(run_dir / "metrics.jsonl") if r["type"] == kind]


def measure(run_dir: Path, wall: float) -> dict:
    """The run's figures from its records: per round, the round's seconds and the slowest
    accepted client's training; their sums; the start-up the summary holds."""
    slowest: dict[int, float] = {}
    for rec in records(run_dir, "client"):
        if rec.get("status") == "accepted":
            t = float(rec["metrics"].get("train_seconds", 0.0))
            slowest[rec["round"]] = max(slowest.get(rec["round"], 0.0), t)
    rounds = [r for r in records(run_dir, "round") if r["round"] > 0]
    summary = json.loads((run_dir / "summary.json").read_text())
    compute = sum(slowest.values())
    return {
        "wall_seconds": round(wall, 1),
        "slowest_training_sum_seconds": round(compute, 1),
        "overhead": round(wall / compute, 3) if compute else None,
        "seconds_to_first_round": summary.get("seconds_to_first_round"),
        "final_accuracy": summary.get("final_accuracy"),
        "status": summary.get("status"),
        "rounds": [{"round": r["round"], "seconds": round(r["seconds"], 2),
                    "slowest_training_seconds": round(slowest.get(r["round"], 0.0), 2)}
                   for r in rounds],
    }


def run(seed: int, rounds: int, work: Path) -> dict:
    cfg, spec, run_dir = work / f"config-{seed}.yaml", work / "spec.yaml", work / f"run-{seed}"
    cfg.write_text(yaml.safe_dump({**CONFIG, "rounds": rounds, "seed": seed}))
    spec.write_text(yaml.safe_dump(SPEC))
    t0 = time.perf_counter()
    p = subprocess.run([sys.executable, "-m", "fedlora.deploy.cli", "run", "--cluster", "netns",
                        "--spec", str(spec), "--config", str(cfg), "--run-dir", str(run_dir),
                        "--no-live"], capture_output=True, text=True)
    wall = time.perf_counter() - t0
    if p.returncode != 0:
        raise SystemExit(f"seed {seed}: fedlora run exited {p.returncode}:\n{p.stdout[-2000:]}{p.stderr[-2000:]}")
    return {"seed": seed, **measure(run_dir, wall)}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--out", type=Path, default=ROOT / "bench" / "overhead-result.json")
    args = ap.parse_args()
    results = []
    with tempfile.TemporaryDirectory(prefix="fedlora-overhead-") as tmp:
        for seed in (int(s) for s in args.seeds.split(",")):
            res = run(seed, args.rounds, Path(tmp))
            results.append(res)
            print(f"seed {seed}: wall {res['wall_seconds']:.1f}s, slowest training summed "
                  f"{res['slowest_training_sum_seconds']:.1f}s, overhead {res['overhead']}, "
                  f"first round {res['seconds_to_first_round']}s after launch, "
                  f"final accuracy {res['final_accuracy']}", flush=True)
    print(f"\n{'seed':>4} {'wall s':>8} {'train s':>8} {'wall/train':>10} {'to round 1 s':>12} {'acc':>7}")
    for r in results:
        print(f"{r['seed']:>4} {r['wall_seconds']:>8.1f} {r['slowest_training_sum_seconds']:>8.1f} "
              f"{r['overhead']:>10.3f} {r['seconds_to_first_round'] or 0:>12.1f} "
              f"{r['final_accuracy'] or 0:>7.4f}")
    print("\nper round (seed, round: round seconds / slowest training seconds):")
    for r in results:
        print(f"  seed {r['seed']}: " + ", ".join(
            f"{x['round']}: {x['seconds']:.1f}/{x['slowest_training_seconds']:.1f}" for x in r["rounds"]))
    args.out.write_text(json.dumps({"config": CONFIG, "spec": SPEC, "rounds": args.rounds,
                                    "results": results}, indent=2) + "\n")
    print(f"\nwritten: {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
