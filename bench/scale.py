"""Coordinator cost as the number of clients grows: peak memory, CPU per client-round, round time.

    .venv/bin/python bench/scale.py --clients 10,100,300 --strategies fedavg-lora,fedavg \
        --rounds 2 --out bench/scale-result.json

For each (strategy, clients) pair a real coordinator process is started with the ``fedlora
server`` CLI (plaintext on 127.0.0.1, port 0, a token per client, the default model), and that
many lightweight clients run as threads of this one process over the project's own transport
(:class:`fedlora.client.transport.Connection`: join, task, download, upload, report). They do
not train: each round a client downloads the global state, uploads a zero update of exactly the
planned tensors (a zero delta, or the global weights unchanged for a ``weights`` plan), packed
with the plan's codec and headed as :mod:`fedlora.client.app` heads its uploads, and reports.
So a round's time is all coordinator and transport, and the coordinator's resources are what
serving that many clients costs. Measured from outside the coordinator:

- peak RSS: ``VmHWM`` of ``/proc/<pid>/status``, read until the round records are in;
- CPU seconds per client-round: ``utime + stime`` of ``/proc/<pid>/stat`` over each round's
  serving window (its ``round_start`` record to its first ``client`` record, written once the
  round is aggregated and before the test-split evaluation), summed over the rounds and divided
  by clients x rounds; also "all", from the first ``round_start`` to the last ``round`` record,
  which adds the per-round evaluation (a 1% test split) and journal commit;
- round seconds: the ``seconds`` of each ``round`` record in ``metrics.jsonl`` (opening the
  round to aggregating it; no client trains, so it is all overhead).

Codecs are off by default (``--codec none``): a zero update would compress to almost nothing,
and the point is to move the planned bytes (about 90 MB a client for full FedAvg of the default
model). At most ``--inflight`` clients transfer at once (this process holds each one's blob
while it uploads, and a downloaded blob only until its template is built), so the coordinator
sees at most that many uploads in flight; every client still joins, long-polls and reports.
A case whose coordinator passes ``--max-rss-gb`` is stopped and reported as not fitting.
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
import yaml

from fedlora.client.transport import Connection, CoordinatorError
from fedlora.common.model import select
from fedlora.common.wire.blob import Blob, pack, unpack
from fedlora.common.wire.codec import Chain
from fedlora.common.wire.protocol import DEFAULT_CHUNK_BYTES
from fedlora.proto.v1 import fedlora_pb2 as pb

NUM_EXAMPLES = 2            # every client declares this at join, in reports and headers: the
# coordinator caps a count at its built-in shard's size, and every shard holds at least 2
POLL_S = 0.02               # how often the coordinator's /proc files and records are read
START_TIMEOUT_S = 300.0     # model load and data split before coordinator.json appears


# ---------------------------------------------------------------------- the coordinator
def server_config(strategy: str, n: int, rounds: int, run_dir: Path, codec: list[str]) -> dict[str, Any]:
    """A run every client of the bench fits in: all of them planned each round, nobody given up
    for being slow (timeouts far beyond a round), a token per client."""
    return {
        "host": "127.0.0.1", "port": 0, "insecure": True, "run_dir": str(run_dir),
        "strategy": strategy, "model": "default", "rounds": rounds,
        "clients": [{"id": client_id(i), "token": secrets.token_hex(16)} for i in range(n)],
        "fraction": 1.0, "min_clients": 1, "round_retries": 0,
        "deadline_s": 7200.0, "join_timeout_s": 1800.0, "client_timeout_s": 1800.0,
        # IID: clients do not train here, so the split only sets their example counts, and
        # Dirichlet(0.5) over TREC's 5,381 rows cannot give 1,000 clients 2 examples each
        "data": {"test_fraction": 0.01, "partition": "iid"},
        "codec": {"upload": codec, "download": codec},
    }


def client_id(i: int) -> str:
    return f"bench-{i:04d}"


@dataclass
class ProcSample:
    """The coordinator's counters at one moment."""

    hwm_kb: int
    rss_kb: int
    cpu_s: float
    threads: int


def sample(pid: int) -> ProcSample | None:
    """Peak and current RSS, and user + system CPU seconds; None once the process is gone."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    kb = {line.split(":")[0]: int(line.split()[1]) for line in status.splitlines()
          if line.startswith(("VmHWM", "VmRSS", "Threads"))}
    fields = stat.rsplit(")", 1)[1].split()  # after "(comm)": field 3 is state, 14/15 utime/stime
    cpu = (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    return ProcSample(kb.get("VmHWM", 0), kb.get("VmRSS", 0), cpu, kb.get("Threads", 0))


class Records:
    """``metrics.jsonl`` read as it grows: each call returns the records added since the last."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._offset = 0

    def new(self) -> list[dict[str, Any]]:
        try:
            with self.path.open("rb") as f:
                f.seek(self._offset)
                chunk = f.read()
        except OSError:
            return []
        end = chunk.rfind(b"\n") + 1  # a line being written waits for the next call
        self._offset += end
        return [json.loads(line) for line in chunk[:end].splitlines() if line.strip()]


# ---------------------------------------------------------------------- the clients
class ZeroUpdates:
    """The zero update of each (global state, plan) pair, built once from the first download
    and shared read-only by every client; downloads after that are received and dropped."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._by_key: dict[tuple, dict[str, torch.Tensor]] = {}

    @staticmethod
    def key(plan: pb.Plan) -> tuple:
        return (plan.global_state.digest, tuple(plan.upload), plan.upload_kind)

    def known(self, plan: pb.Plan) -> bool:
        with self._lock:
            return self.key(plan) in self._by_key

    def build(self, plan: pb.Plan, data: bytes) -> None:
        tensors, _ = unpack(data)
        names = select(list(tensors), plan.upload)
        if plan.upload_kind == "delta":
            update = {n: torch.zeros_like(tensors[n]) for n in names}
        else:
            update = {n: tensors[n] for n in names}
        with self._lock:
            self._by_key[self.key(plan)] = update

    def get(self, plan: pb.Plan) -> dict[str, torch.Tensor]:
        with self._lock:
            return self._by_key[self.key(plan)]


@dataclass
class ClientOutcome:
    rounds: int = 0
    error: str = ""


def run_client(address: str, cid: str, token: str, zeros: ZeroUpdates, gate: threading.Semaphore,
               outcome: ClientOutcome) -> None:
    """One client's life, as :class:`fedlora.client.app.Client` lives it, minus training."""
    conn = Connection(address, None, no_progress_timeout_s=600.0, coordinator_timeout_s=3600.0,
                      connect_timeout_s=600.0)
    profile = pb.DeviceProfile(accelerator="cpu", accelerator_name="bench", threads=1,
                               num_examples=NUM_EXAMPLES)
    try:
        reply = conn.join(cid, token, profile)
        conn.start_heartbeat()
        chunk = reply.spec.chunk_bytes or DEFAULT_CHUNK_BYTES
        conn.report(0, {"num_examples": float(NUM_EXAMPLES)}, profile)
        last = 0
        while True:
            task = conn.task(last)
            if task.kind == pb.Task.DONE:
                if task.failed:
                    outcome.error = f"run failed: {task.message}"
                return
            if task.kind == pb.Task.WAIT:
                continue
            play(conn, cid, task.plan, chunk, zeros, gate)
            outcome.rounds += 1
            last = task.round
    except CoordinatorError as e:
        outcome.error = str(e)
    finally:
        conn.close()


def play(conn: Connection, cid: str, plan: pb.Plan, chunk: int, zeros: ZeroUpdates,
         gate: threading.Semaphore) -> None:
    """Download, a zero update, upload, report: the client's round with the training left out.
    The downloaded bytes are dropped as soon as they are counted (or the template built)."""
    rnd = plan.round
    t0 = time.perf_counter()
    with gate:
        data, down = conn.download(rnd, plan.global_state)
        if not zeros.known(plan):
            zeros.build(plan, data)
        del data
        blob: Blob = pack(zeros.get(plan), {"round": rnd, "client": cid, "num_examples": NUM_EXAMPLES,
                                            "upload_kind": plan.upload_kind or "weights"},
                          Chain.parse(list(plan.upload_codec.stages)))
        up = conn.upload(rnd, blob, chunk)
        del blob
    conn.report(rnd, {"num_examples": float(NUM_EXAMPLES), "client_down_seconds": down.seconds,
                      "client_up_seconds": up.seconds,
                      "client_down_payload_bytes": float(down.payload_bytes),
                      "client_up_payload_bytes": float(up.payload_bytes),
                      "round_seconds": time.perf_counter() - t0})


# ---------------------------------------------------------------------- one case
@dataclass
class CaseResult:
    strategy: str
    clients: int
    rounds: int
    inflight: int
    status: str = "ok"                    # ok | did not fit | failed
    detail: str = ""
    peak_rss_mib: float = 0.0
    max_threads: int = 0                  # the coordinator's threads, most seen at a sample
    rss_before_round1_mib: float = 0.0    # after model load, data split and every join
    cpu_s_per_client_round: float = 0.0       # serving windows: transfers, checks, folds
    cpu_s_per_client_round_all: float = 0.0   # first round start to last round record
    round_seconds: list[float] = field(default_factory=list)
    accepted: list[int] = field(default_factory=list)
    up_mb_per_client: float = 0.0
    down_mb_per_client: float = 0.0
    wall_s: float = 0.0


def run_case(strategy: str, n: int, rounds: int, inflight: int, codec: list[str], work: Path,
             max_rss_gb: float, timeout_s: float) -> CaseResult:
    res = CaseResult(strategy, n, rounds, inflight)
    run_dir = work / f"{strategy}-{n}"
    run_dir.mkdir(parents=True)
    cfg = server_config(strategy, n, rounds, run_dir, codec)
    (run_dir / "bench-config.yaml").write_text(yaml.safe_dump(cfg))
    env = dict(os.environ, PYTHONUNBUFFERED="1", HF_HUB_OFFLINE="1")
    t_start = time.time()
    with (run_dir / "coordinator.log").open("wb") as log:
        proc = subprocess.Popen([sys.executable, "-m", "fedlora.deploy.cli", "server", "--config",
                                 str(run_dir / "bench-config.yaml")], stdout=log,
                                stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env)
    threads: list[threading.Thread] = []
    try:
        addr_file = run_dir / "coordinator.json"
        while not addr_file.is_file():
            if proc.poll() is not None or time.time() - t_start > START_TIMEOUT_S:
                raise RuntimeError("coordinator did not start:\n" + tail(run_dir / "coordinator.log"))
            time.sleep(POLL_S)
        info = json.loads(addr_file.read_text())
        pid, address = int(info["pid"]), info["address"]
        zeros, gate = ZeroUpdates(), threading.Semaphore(inflight)
        outcomes = [ClientOutcome() for _ in range(n)]
        for i, entry in enumerate(cfg["clients"]):
            t = threading.Thread(target=run_client, name=entry["id"], daemon=True,
                                 args=(address, entry["id"], entry["token"], zeros, gate, outcomes[i]))
            t.start()
            threads.append(t)
        watch(proc, pid, run_dir, res, rounds, n, max_rss_gb, t_start + timeout_s)
        if res.status == "ok":
            proc.wait(timeout=120)
            for t in threads:
                t.join(timeout=60)
            errors = sorted({o.error for o in outcomes if o.error})
            if errors or proc.returncode != 0:
                res.status = "failed"
                res.detail = f"coordinator exit {proc.returncode}; " + "; ".join(errors[:3])
    except (RuntimeError, subprocess.TimeoutExpired) as e:
        res.status, res.detail = "failed", str(e)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    res.wall_s = round(time.time() - t_start, 1)
    return res


def watch(proc: subprocess.Popen, pid: int, run_dir: Path, res: CaseResult, rounds: int, n: int,
          max_rss_gb: float, end: float) -> None:
    """Follows the coordinator until its last round record: peak RSS, and CPU over each round's
    serving window (``round_start`` to its first ``client`` record, written after aggregation
    and before the evaluation) and over all rounds."""
    records = Records(run_dir / "metrics.jsonl")
    cpu_first: float | None = None
    opened: float | None = None   # CPU at the current round's start
    serving = 0.0
    done: list[dict[str, Any]] = []
    while True:
        s = sample(pid)
        if s is None or proc.poll() is not None:
            res.status, res.detail = "failed", "coordinator exited:\n" + tail(run_dir / "coordinator.log")
            return
        res.peak_rss_mib = s.hwm_kb / 1024
        res.max_threads = max(res.max_threads, s.threads)
        if s.hwm_kb > max_rss_gb * (1 << 20):
            res.status = "did not fit"
            res.detail = f"coordinator peak RSS passed {max_rss_gb:g} GB; stopped"
            return
        if time.time() > end:
            res.status, res.detail = "failed", "timed out"
            return
        for r in records.new():
            if r["type"] == "round_start":
                opened = s.cpu_s
                if cpu_first is None:
                    cpu_first = s.cpu_s
                    res.rss_before_round1_mib = s.rss_kb / 1024
            elif r["type"] == "client" and opened is not None:
                serving += s.cpu_s - opened
                opened = None
            elif r["type"] == "round" and r["round"] > 0:
                done.append(r)
            elif r["type"] == "round_failed":
                res.status, res.detail = "failed", "a round failed:\n" + tail(run_dir / "coordinator.log")
                return
        if len(done) >= rounds and cpu_first is not None:
            res.cpu_s_per_client_round = serving / (n * rounds)
            res.cpu_s_per_client_round_all = (s.cpu_s - cpu_first) / (n * rounds)
            res.round_seconds = [r["seconds"] for r in done]
            res.accepted = [r["accepted"] for r in done]
            res.up_mb_per_client = sum(r["up_mb"] for r in done) / (n * rounds)
            res.down_mb_per_client = sum(r["down_mb"] for r in done) / (n * rounds)
            return
        time.sleep(POLL_S)


def tail(path: Path, n: int = 20) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-n:])
    except OSError:
        return f"(no {path})"


# ---------------------------------------------------------------------- the table
def ratios(rows: list[CaseResult]) -> list[dict[str, Any]]:
    """Per strategy, what each added client costs between consecutive client counts."""
    out = []
    for strategy in dict.fromkeys(r.strategy for r in rows):
        ok = sorted((r for r in rows if r.strategy == strategy and r.status == "ok"),
                    key=lambda r: r.clients)
        for a, b in zip(ok, ok[1:]):
            added = b.clients - a.clients
            out.append({"strategy": strategy, "from": a.clients, "to": b.clients,
                        "rss_mib_per_added_client": (b.peak_rss_mib - a.peak_rss_mib) / added,
                        "peak_rss_ratio": b.peak_rss_mib / a.peak_rss_mib,
                        "cpu_per_client_round_ratio": (b.cpu_s_per_client_round / a.cpu_s_per_client_round
                                                       if a.cpu_s_per_client_round else None),
                        "round_seconds_ratio": max(b.round_seconds) / max(a.round_seconds)})
    return out


def print_table(rows: list[CaseResult], rats: list[dict[str, Any]]) -> None:
    print(f"{'strategy':<12} {'clients':>7} {'status':<11} {'peak RSS MiB':>12} {'threads':>7} {'RSS@r1 MiB':>10} "
          f"{'CPU s/cl-round':>14} {'(all)':>7} {'round s':>15} {'accepted':>9} {'up MB/cl':>8} "
          f"{'down MB/cl':>10}")
    for r in rows:
        secs = " ".join(f"{s:.2f}" for s in r.round_seconds) or "-"
        acc = "/".join(str(a) for a in r.accepted) or "-"
        print(f"{r.strategy:<12} {r.clients:>7} {r.status:<11} {r.peak_rss_mib:>12.0f} "
              f"{r.max_threads:>7} {r.rss_before_round1_mib:>10.0f} {r.cpu_s_per_client_round:>14.4f} "
              f"{r.cpu_s_per_client_round_all:>7.4f} {secs:>15} {acc:>9} "
              f"{r.up_mb_per_client:>8.3f} {r.down_mb_per_client:>10.3f}")
        if r.status != "ok":
            print(f"    {r.detail.splitlines()[0] if r.detail else ''}")
    if rats:
        print(f"\n{'strategy':<12} {'clients':>10} {'RSS MiB/added client':>20} {'peak RSS x':>10} "
              f"{'CPU/client-round x':>18} {'round s x':>9}")
        for q in rats:
            cpu = "-" if q["cpu_per_client_round_ratio"] is None else f"{q['cpu_per_client_round_ratio']:.2f}"
            print(f"{q['strategy']:<12} {q['from']:>4} -> {q['to']:<3} {q['rss_mib_per_added_client']:>20.3f} "
                  f"{q['peak_rss_ratio']:>10.2f} {cpu:>18} {q['round_seconds_ratio']:>9.2f}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--clients", default="10,100,300")
    ap.add_argument("--strategies", default="fedavg-lora,fedavg")
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--inflight", type=int, default=16, help="clients transferring at once")
    ap.add_argument("--codec", default="none", help="'none' or a chain for both ways, e.g. zstd:3")
    ap.add_argument("--max-rss-gb", type=float, default=12.0, help="stop a case past this coordinator RSS")
    ap.add_argument("--case-timeout", type=float, default=3600.0, help="seconds a case may take")
    ap.add_argument("--out", help="also write the results here (JSON)")
    args = ap.parse_args()
    codec = [] if args.codec == "none" else args.codec.split("+")
    rows: list[CaseResult] = []
    with tempfile.TemporaryDirectory(prefix="fedlora-scale-") as tmp:
        for strategy in args.strategies.split(","):
            for n in [int(x) for x in args.clients.split(",")]:
                res = run_case(strategy, n, args.rounds, args.inflight, codec, Path(tmp),
                               args.max_rss_gb, args.case_timeout)
                rows.append(res)
                print(f"# {strategy} x {n}: {res.status}, peak RSS {res.peak_rss_mib:.0f} MiB, "
                      f"{res.wall_s:.0f}s", flush=True)
    rats = ratios(rows)
    print(f"\nscale: {args.rounds} rounds, codec {args.codec}, at most {args.inflight} clients "
          f"transferring at once, clients do not train")
    print_table(rows, rats)
    if args.out:
        Path(args.out).write_text(json.dumps({
            "commit": git_commit(), "rounds": args.rounds, "inflight": args.inflight,
            "codec": args.codec, "cases": [asdict(r) for r in rows], "ratios": rats}, indent=1) + "\n")


def git_commit() -> str:
    try:
        return subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                              cwd=Path(__file__).resolve().parent).stdout.strip()
    except OSError:
        return ""


if __name__ == "__main__":
    main()
