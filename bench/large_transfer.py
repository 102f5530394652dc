"""Large transfers: full FedAvg of the built-in causal LM on the netns cluster.

    sudo .venv/bin/python bench/large_transfer.py [--rate 500] [--codecs default,none] \
        [--out bench/large-transfer-result.json]

Per codec case, one run of ``fedlora run --cluster netns``: ``strategy: fedavg`` (full
fine-tuning, no adapter), ``task: causal-lm``, the default model (SmolLM2-135M-Instruct, about
134.5M parameters, about 540 MB in float32), two client processes, each on its own link shaped
with tbf to ``--rate`` Mbit/s both ways, one local step of batch 2, one round. Measured:

- per client and direction, from the run's ``client`` records: tensor, payload (chunk data),
  protobuf (serialized messages) and interface bytes (the client's own eth0 counters), and the
  seconds the transfer took; the interface/payload ratio, and the link utilisation
  ``payload bits / (seconds x rate)``;
- the coordinator's memory, read from ``/proc/<pid>/status`` every ``POLL_S``: peak RSS
  (``VmHWM``), and the largest anonymous (``RssAnon``) and file-backed (``RssFile``, e.g. a
  mapped spool file) resident sizes seen, overall and inside the round (``round_start`` to the
  ``round`` record); each divided by the model's float32 size.

Needs root (network namespaces, tc). No netem: links differ in rate only.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[1]
POLL_S = 0.05
CODECS = {"default": None, "none": []}  # None: the config's default chain (zstd:3 both ways)
CLIENTS = 2  # client processes, each on its own shaped link (--clients)


def run_config(run_dir: Path, codec: list[str] | None, steps: int, batch: int,
               clients: int) -> dict[str, Any]:
    cfg: dict[str, Any] = {
        "task": "causal-lm", "model": "default", "strategy": "fedavg", "rounds": 1,
        "clients": clients, "min_clients": clients, "round_retries": 0, "seed": 0,
        "run_dir": str(run_dir), "insecure": True,
        "deadline_s": 3600.0, "join_timeout_s": 900.0, "client_timeout_s": 900.0,
        "eval_examples": 8, "generate_examples": 0, "eval_batch_size": 8,
        "training": {"max_steps": steps, "batch_size": batch, "learning_rate": 1e-5},
        "data": {"max_length": 64},
    }
    if codec is not None:
        cfg["codec"] = {"upload": codec, "download": codec}
    return cfg


class Sampler(threading.Thread):
    """Reads the coordinator's /proc status until told to stop; keeps (time, kB fields)."""

    FIELDS = ("VmHWM", "VmRSS", "RssAnon", "RssFile")

    def __init__(self, pid: int, run_dir: Path):
        super().__init__(daemon=True)
        self.pid = pid
        self.run_dir = run_dir
        self.samples: list[tuple[float, dict[str, int]]] = []
        self.marks: dict[str, float] = {}  # record type -> when it was first seen (our clock)
        self.halt = threading.Event()

    def run(self) -> None:
        while not self.halt.is_set():
            try:
                text = Path(f"/proc/{self.pid}/status").read_text()
            except OSError:
                return
            kb = {}
            for line in text.splitlines():
                key = line.split(":")[0]
                if key in self.FIELDS:
                    kb[key] = int(line.split()[1])
            self.samples.append((time.time(), kb))
            if len(self.samples) % 10 == 0:
                for r in records(self.run_dir):
                    self.marks.setdefault(r["type"], time.time())
            time.sleep(POLL_S)


def records(run_dir: Path) -> list[dict[str, Any]]:
    path = run_dir / "metrics.jsonl"
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def run_case(name: str, codec: list[str] | None, rate: float, work: Path, steps: int, batch: int,
             timeout_s: float, clients: int = CLIENTS) -> dict[str, Any]:
    run_dir = work / f"run-{name}"
    cfg_path = work / f"config-{name}.yaml"
    cfg_path.write_text(yaml.safe_dump(run_config(run_dir, codec, steps, batch, clients)))
    spec = work / "spec.yaml"
    spec.write_text("subnet: 10.213.13.0/24\nclients:\n" + "".join(
        f"  - {{id: client-{c}, up_mbit: {rate}, down_mbit: {rate}}}\n" for c in range(clients)))
    cmd = [sys.executable, "-m", "fedlora.deploy.cli", "run", "--cluster", "netns", "--spec", str(spec),
           "--config", str(cfg_path), "--run-dir", str(run_dir), "--no-live"]
    load0 = Path("/proc/loadavg").read_text().split()[:3]
    t0 = time.time()
    log = open(work / f"run-{name}.out", "w")
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, cwd=ROOT)
    sampler = None
    try:
        info = run_dir / "coordinator.json"
        while sampler is None and proc.poll() is None and time.time() - t0 < timeout_s:
            if info.is_file():
                try:
                    pid = int(json.loads(info.read_text())["pid"])
                except (ValueError, KeyError):
                    time.sleep(POLL_S)
                    continue
                sampler = Sampler(pid, run_dir)
                sampler.start()
            time.sleep(POLL_S)
        code = proc.wait(timeout=max(1.0, timeout_s - (time.time() - t0)))
    finally:
        if proc.poll() is None:
            proc.terminate()
            proc.wait(30)
        if sampler is not None:
            sampler.halt.set()
            sampler.join()
        log.close()
    wall = time.time() - t0
    load1 = Path("/proc/loadavg").read_text().split()[:3]
    if code != 0:
        tail = (work / f"run-{name}.out").read_text()[-3000:]
        coord = run_dir / "logs" / "coordinator.log"
        tail += "\n--- coordinator.log\n" + (coord.read_text()[-3000:] if coord.is_file() else "")
        raise RuntimeError(f"case {name}: fedlora run exited {code}\n{tail}")
    recs = records(run_dir)
    start = next(r for r in recs if r["type"] == "round_start")
    rnd = next(r for r in recs if r["type"] == "round" and r["round"] == 1)
    clients = [r for r in recs if r["type"] == "client" and r["round"] == 1]
    return summarise(name, codec, rate, clients, rnd, start, sampler, run_dir, wall, load0, load1)


def summarise(name, codec, rate, clients, rnd, start, sampler, run_dir, wall, load0, load1) -> dict[str, Any]:
    model_bytes = clients[0]["up"]["tensor_bytes"] or clients[0]["down"]["tensor_bytes"]
    transfers = []
    for c in clients:
        for d in ("down", "up"):
            t = c[d]
            iface = t.get("iface_bytes")
            transfers.append({
                "client": c["client"], "direction": d, "tensor_mb": t["tensor_bytes"] / 1e6,
                "payload_mb": t["payload_bytes"] / 1e6, "protobuf_mb": t["protobuf_bytes"] / 1e6,
                "iface_mb": iface / 1e6 if iface else None, "seconds": t["seconds"],
                "utilisation": t["payload_bytes"] * 8 / (t["seconds"] * rate * 1e6) if t["seconds"] else None,
                "iface_per_payload": iface / t["payload_bytes"] if iface else None,
                "protobuf_per_payload": t["protobuf_bytes"] / t["payload_bytes"],
                "payload_per_tensor": t["payload_bytes"] / t["tensor_bytes"] if t["tensor_bytes"] else None})
    # the round's window on the coordinator's clock: records carry seconds since its start
    samples = sampler.samples if sampler is not None else []
    t_first = samples[0][0] if samples else 0.0
    mem = {}
    for key in ("VmRSS", "RssAnon", "RssFile"):
        mem[f"max_{key}_mib"] = max((s[1].get(key, 0) for s in samples), default=0) / 1024
    mem["peak_rss_mib"] = max((s[1].get("VmHWM", 0) for s in samples), default=0) / 1024
    # RSS just before the round opens (model loaded, initial evaluation done), to POLL_S x 10
    t_open = sampler.marks.get("round_start", 0.0) if sampler is not None else 0.0
    before = [s[1].get("VmRSS", 0) for s in samples if s[0] <= t_open]
    mem["rss_before_round_mib"] = (before[-1] / 1024) if before else None
    mib_model = model_bytes / (1 << 20)
    mem["model_mib"] = mib_model
    mem["peak_rss_per_model"] = mem["peak_rss_mib"] / mib_model
    mem["max_anon_per_model"] = mem["max_RssAnon_mib"] / mib_model
    if mem["rss_before_round_mib"]:
        mem["round_growth_per_model"] = (mem["peak_rss_mib"] - mem["rss_before_round_mib"]) / mib_model
    trace = [(round(s[0] - t_first, 2), s[1].get("VmRSS", 0) // 1024, s[1].get("RssAnon", 0) // 1024,
              s[1].get("RssFile", 0) // 1024) for s in samples[:: max(1, len(samples) // 400)]]
    return {"case": name, "clients": len(clients),
            "codec": codec if codec is not None else "default (zstd:3)", "rate_mbit": rate,
            "model_bytes": model_bytes, "transfers": transfers, "memory": mem,
            "round_seconds": rnd["seconds"], "wall_seconds": wall, "loadavg_before": load0,
            "loadavg_after": load1, "rss_trace_s_rss_anon_file_mib": trace,
            "round_record_time_s": rnd["time"], "round_start_time_s": start["time"]}


def print_table(results: list[dict[str, Any]]) -> None:
    for res in results:
        m = res["memory"]
        print(f"\ncase {res['case']}, {res.get('clients', 2)} clients: codec {res['codec']}, tbf {res['rate_mbit']:g} Mbit/s each way per "
              f"client, model {res['model_bytes'] / 1e6:.1f} MB fp32; round {res['round_seconds']:.1f} s, "
              f"wall {res['wall_seconds']:.0f} s, loadavg {' '.join(res['loadavg_before'])} -> "
              f"{' '.join(res['loadavg_after'])}")
        print(f"{'client':>9} {'dir':>4} {'tensor MB':>9} {'payload MB':>10} {'pb MB':>8} {'iface MB':>8} "
              f"{'seconds':>7} {'util':>5} {'iface/payload':>13} {'pb/payload':>12} {'payload/tensor':>14}")
        for t in res["transfers"]:
            iface = f"{t['iface_mb']:8.1f}" if t["iface_mb"] else f"{'-':>8}"
            ratio = f"{t['iface_per_payload']:13.4f}" if t["iface_per_payload"] else f"{'-':>13}"
            print(f"{t['client']:>9} {t['direction']:>4} {t['tensor_mb']:9.1f} {t['payload_mb']:10.1f} "
                  f"{t['protobuf_mb']:8.1f} {iface} {t['seconds']:7.2f} {t['utilisation']:5.3f} {ratio} "
                  f"{t['protobuf_per_payload']:12.5f} {t['payload_per_tensor']:14.4f}")
        print(f"coordinator: peak RSS {m['peak_rss_mib']:.0f} MiB = {m['peak_rss_per_model']:.2f} x model "
              f"({m['model_mib']:.0f} MiB); RSS before the round {m['rss_before_round_mib'] or 0:.0f} MiB; "
              f"max anon {m['max_RssAnon_mib']:.0f} MiB ({m['max_anon_per_model']:.2f} x), "
              f"max file-backed {m['max_RssFile_mib']:.0f} MiB; the round added "
              f"{m.get('round_growth_per_model', 0):.2f} x model")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rate", type=float, default=500.0, help="Mbit/s each way, each client link")
    ap.add_argument("--codecs", default="default,none", help=f"cases, of {sorted(CODECS)}")
    ap.add_argument("--steps", type=int, default=1)
    ap.add_argument("--batch", type=int, default=2)
    ap.add_argument("--clients", type=int, default=CLIENTS,
                    help="client processes (the coordinator's memory must not grow with them)")
    ap.add_argument("--timeout", type=float, default=1800.0, help="seconds per case")
    ap.add_argument("--label", default="", help="stored with the results (e.g. before/after)")
    ap.add_argument("--out", default=str(ROOT / "bench" / "large-transfer-result.json"))
    args = ap.parse_args()
    if os.geteuid() != 0:
        sys.exit("bench/large_transfer.py needs root (the netns cluster)")
    results = []
    with tempfile.TemporaryDirectory(prefix="fedlora-large-") as tmp:
        for name in args.codecs.split(","):
            results.append(run_case(name, CODECS[name], args.rate, Path(tmp), args.steps, args.batch,
                                    args.timeout, args.clients))
            results[-1]["label"] = args.label
    print_table(results)
    out = Path(args.out)
    old = json.loads(out.read_text()) if out.is_file() else []
    out.write_text(json.dumps([r for r in old if r.get("label") != args.label or not args.label] + results,
                              indent=1) + "\n")


if __name__ == "__main__":
    main()
