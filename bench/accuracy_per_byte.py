"""Accuracy per byte on the default task: the demo run under different codec chains.

    .venv/bin/python bench/accuracy_per_byte.py [--rounds 5]

Each configuration is the README demo (all-MiniLM-L6-v2, TREC, 4 clients, Dirichlet 0.5,
FedAvg-LoRA r=8, 30 local steps) run as a real local cluster with `fedlora run`; only the codec
chains differ. Uploads are deltas against the round's global state. Reports final test
accuracy and the payload MB that crossed each way (summed over clients and rounds).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

CONFIGS = {
    "none": ([], []),
    "fp16+zstd": (["fp16", "zstd:3"], ["fp16", "zstd:3"]),
    "int8+zstd": (["int8:256", "zstd:3"], ["int8:256", "zstd:3"]),
    "topk10%+int8+zstd": (["topk:0.1", "int8:256", "zstd:3"], ["int8:256", "zstd:3"]),
}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--out", default="runs/bench-accuracy-per-byte")
    ap.add_argument("--only", help="comma-separated config names")
    args = ap.parse_args()
    rows = []
    names = args.only.split(",") if args.only else list(CONFIGS)
    for name in names:
        up, down = CONFIGS[name]
        run_dir = Path(args.out) / name.replace("%", "pct").replace("+", "-")
        cmd = [sys.executable, "-m", "fedlora.deploy.cli", "run", "--config", str(ROOT / "deploy" / "demo.yaml"),
               "--rounds", str(args.rounds), "--run-dir", str(run_dir), "--no-live",
               "--upload-codec", ",".join(up), "--download-codec", ",".join(down)]
        p = subprocess.run(cmd, capture_output=True, text=True)
        if p.returncode != 0:
            raise SystemExit(f"{name} failed:\n{p.stdout}\n{p.stderr}")
        s = json.loads((run_dir / "summary.json").read_text())
        rows.append({"config": name, "upload": up, "download": down, "final_accuracy": s["final_accuracy"],
                     "accuracy_by_round": s["accuracy_by_round"], "mb_up": s["mb_up"], "mb_down": s["mb_down"],
                     "tensor_mb_up": s["bytes"]["up"]["tensor_bytes"] / 1e6,
                     "wall_seconds": s["elapsed_seconds"]})
        print(f"done {name}: accuracy {s['final_accuracy']:.4f}", flush=True)
    out = Path(args.out) / "results.json"
    if args.only and out.is_file():  # keep the configurations not re-run this time
        rows += [r for r in json.loads(out.read_text()) if r["config"] not in names]
        rows.sort(key=lambda r: list(CONFIGS).index(r["config"]))
    base = rows[0]["mb_up"] + rows[0]["mb_down"]
    print(f"{'config':<20} {'final acc':>9} {'MB up':>8} {'MB down':>8} {'total vs none':>13} {'seconds':>8}")
    for r in rows:
        print(f"{r['config']:<20} {r['final_accuracy']:>9.4f} {r['mb_up']:>8.3f} {r['mb_down']:>8.3f} "
              f"{(r['mb_up'] + r['mb_down']) / base:>13.3f} {r['wall_seconds']:>8.1f}")
    Path(args.out).mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
