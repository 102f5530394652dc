"""Link utilisation and wire overhead of real update transfers over a shaped link.

    sudo .venv/bin/python bench/link.py [--rate 20] [--sizes 1,10,50]

For each size, a model whose full weights are about that many MB is built (random init), and
a one-client, one-round full-FedAvg federation runs on the netns cluster with the client's
link shaped to --rate Mbit/s both ways (tbf) and no codec, so the update crosses at its full
size. From the coordinator's records: payload bytes and seconds of each transfer (goodput),
and from the client's eth0 counters the bytes the interface carried. Needs root.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

HIDDEN_FOR_MB = {1: 104, 10: 368, 50: 856}  # 2-layer BERT (intermediate 2h), vocab 800: ~1 / 10 / 50 MB fp32


def run_once(mb: int, rate: float, work: Path) -> dict:
    from tiny import build_tiny_model

    model = build_tiny_model(work / f"model-{mb}", hidden=HIDDEN_FOR_MB[mb], layers=2)
    spec = work / "spec.yaml"
    spec.write_text(f"subnet: 10.213.9.0/24\nclients:\n  - {{id: client-0, up_mbit: {rate}, down_mbit: {rate}}}\n")
    run_dir = work / f"run-{mb}"
    cmd = [sys.executable, "-m", "fedlora.deploy.cli", "run", "--cluster", "netns", "--spec", str(spec),
           "--model", str(model), "--strategy", "fedavg", "--rounds", "1", "--min-clients", "1",
           "--local-steps", "1", "--batch-size", "4", "--upload-codec", "", "--download-codec", "",
           "--run-dir", str(run_dir), "--no-live"]
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=1800)
    if p.returncode != 0:
        raise RuntimeError(p.stdout + p.stderr)
    rec = next(json.loads(l) for l in (run_dir / "metrics.jsonl").read_text().splitlines()
               if json.loads(l)["type"] == "client")
    out = {}
    for d in ("up", "down"):
        t = rec[d]
        goodput = t["payload_bytes"] * 8 / t["seconds"] / 1e6
        out[d] = {"payload_mb": t["payload_bytes"] / 1e6, "seconds": t["seconds"],
                  "goodput_mbit": goodput, "utilisation": goodput / rate,
                  "iface_mb": (t["iface_bytes"] or 0) / 1e6,
                  "wire_utilisation": (t["iface_bytes"] or 0) * 8 / t["seconds"] / 1e6 / rate,
                  "overhead": (t["iface_bytes"] / t["payload_bytes"]) if t["iface_bytes"] else None,
                  "protobuf_overhead": t["protobuf_bytes"] / t["payload_bytes"]}
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rate", type=float, default=20.0)
    ap.add_argument("--sizes", default="1,10,50")
    ap.add_argument("--json")
    args = ap.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for mb in [int(x) for x in args.sizes.split(",")]:
            res = run_once(mb, args.rate, Path(tmp))
            for d, r in res.items():
                rows.append({"size_mb": mb, "direction": d, **r})
    print(f"link: tbf {args.rate:g} Mbit/s each way, one client, full-FedAvg update, no codec")
    print(f"{'size':>6} {'dir':>5} {'payload MB':>10} {'seconds':>8} {'goodput Mbit/s':>14} "
          f"{'utilisation':>11} {'iface MB':>9} {'iface/payload':>13} {'pb/payload':>12}")
    for r in rows:
        print(f"{r['size_mb']:>4}MB {r['direction']:>5} {r['payload_mb']:>10.3f} {r['seconds']:>8.2f} "
              f"{r['goodput_mbit']:>14.2f} {r['utilisation']:>11.3f} {r['iface_mb']:>9.3f} "
              f"{(r['overhead'] or float('nan')):>13.4f} {r['protobuf_overhead']:>12.4f}")
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
