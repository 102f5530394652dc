"""The coordinator's Prometheus endpoint, scraped over a real socket while a real run (a
coordinator and three client processes) goes on; its counts agree with ``metrics.jsonl``. A
metrics port already in use is one line and exit 2, before any work."""

from __future__ import annotations

import socket
import subprocess
import sys
import urllib.request

from prometheus_client.parser import text_string_to_metric_families

from fedlora.server.runlog import read_records
from procs import finish, free_port, start_client, start_server, tail, wait_until
from proxy import CutProxy

CLIENTS = ["client-0", "client-1", "client-2"]
MEASURED = ("tensor_bytes", "payload_bytes", "protobuf_bytes")  # iface: not measurable on loopback

Samples = dict[tuple[str, frozenset], float]


def scrape(port: int) -> tuple[str, Samples]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as r:
        text = r.read().decode()
    return text, {(s.name, frozenset(s.labels.items())): s.value
                  for fam in text_string_to_metric_families(text) for s in fam.samples}


def get(samples: Samples, metric: str, **labels: str) -> float | None:
    return samples.get((metric, frozenset(labels.items())))


def bytes_in(recs: list[dict], d: str, level: str, cid: str) -> int:
    return sum(r[d][level] for r in recs if r["client"] == cid)


def test_the_metrics_endpoint_is_scraped_during_a_run(tmp_path, tiny_model):
    run_dir, port = tmp_path / "run", free_port()
    server, address = start_server(run_dir, {
        "model": str(tiny_model), "rounds": 3, "min_clients": 3, "clients": len(CLIENTS),
        "seed": 2, "metrics_port": port,
        "chunk_bytes": 1024,  # uploads of several chunks: the proxy holds one after its first
        "training": {"max_steps": 2, "batch_size": 16, "learning_rate": 0.01}})
    # client-2's round-2 upload is held back until the scrape and the reads after it are done:
    # the run is still going then, however fast its rounds (round 1's record lands beside round 2)
    proxy = CutProxy(address)
    proxy.hold_upload(2)
    clients = [start_client(run_dir, proxy.address if c == CLIENTS[-1] else address, c)
               for c in CLIENTS]
    procs = [server, *clients]
    try:
        def a_round_done():
            text, samples = scrape(port)
            return (text, samples) if (get(samples, "fedlora_round") or 0) >= 1 else None

        text, samples = wait_until("a round in the scrape", a_round_done, timeout=300, procs=procs)
        # read after the scrape: what it counted, and maybe more of the next round
        recs = read_records(run_dir / "metrics.jsonl")  # mid-run: a half-written line is skipped
        after = [r for r in recs if r["type"] == "client"]
        uploads_after = len([r for r in recs if r["type"] == "upload"])
        rounds_after = len([r for r in recs if r["type"] == "round" and r["round"] > 0])
        proxy.release()
        codes = finish(procs, timeout=300)
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
        proxy.close()
    assert codes == [0, 0, 0, 0], tail(run_dir / "logs" / "coordinator.log")
    print("\n" + "\n".join(line for line in text.splitlines()
                           if line.startswith("fedlora_") and "_created" not in line
                           and "_bucket" not in line))
    done = int(get(samples, "fedlora_round"))  # its counts are all in (server/metrics.py)
    assert done <= get(samples, "fedlora_rounds_completed_total") <= rounds_after
    assert done <= get(samples, "fedlora_round_seconds_count") <= rounds_after
    assert get(samples, "fedlora_clients_connected") == len(CLIENTS)
    assert len(CLIENTS) * done <= get(samples, "fedlora_uploads_total", status="accepted") <= uploads_after
    assert 0 <= get(samples, "fedlora_test_metric", name="accuracy") <= 1
    assert get(samples, "fedlora_test_metric", name="loss") > 0
    # every record of the rounds the scrape has seen is counted, none the file lacks
    before = [r for r in after if r["round"] <= done]
    for cid in CLIENTS:
        for d in ("up", "down"):
            for level in MEASURED:
                got = get(samples, "fedlora_bytes_total", level=level, direction=d, client=cid)
                assert 0 < bytes_in(before, d, level, cid) <= got <= bytes_in(after, d, level, cid), \
                    (cid, d, level)
    assert {dict(k[1]).get("client") for k in samples if k[0] == "fedlora_bytes_total"} == set(CLIENTS)


def test_a_busy_metrics_port_is_one_line_exit_2(tmp_path):
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        p = subprocess.run([sys.executable, "-m", "fedlora.deploy.cli", "server", "--insecure",
                            "--open-run", "--port", "0", "--metrics-port", str(port),
                            "--run-dir", str(tmp_path / "run")],
                           capture_output=True, text=True, timeout=120)
    assert p.returncode == 2, p.stderr
    assert p.stderr.strip().splitlines() == [
        f"fedlora server: config error: metrics_port: cannot bind 127.0.0.1:{port}: "
        "Address already in use"], p.stderr
    assert not (tmp_path / "run").exists()  # refused before any work or write
