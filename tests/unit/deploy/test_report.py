"""``fedlora report``: protobuf bytes named as such, and wire bytes printed only where the
client's interface carried its transfers alone; ``shared (why)`` where it carried other traffic,
for run folders of today's coordinator and of the one before the rename alike."""

from __future__ import annotations

import json
from pathlib import Path

from rich.console import Console

from fedlora.common.wire.stats import TransferStats
from fedlora.deploy.report import report
from fedlora.proto.v1 import fedlora_pb2 as pb
from fedlora.server.records import write_clients
from fedlora.server.rounds import Round
from fedlora.server.runlog import RunLog, read_records, summarize
from fedlora.server.strategy import Instruction

PAYLOAD = 500_000


def _old_record(cid: str, up_tx: float) -> dict:
    """A client record as the coordinator wrote it before the rename and the verdicts."""
    part = {"tensor_bytes": 2 * PAYLOAD, "payload_bytes": PAYLOAD, "grpc_bytes": PAYLOAD + 300,
            "seconds": 0.5}
    return {"type": "client", "round": 1, "attempt": 0, "client": cid, "status": "accepted",
            "weight": 10.0, "up": {**part, "iface_bytes": int(up_tx)},
            "down": {**part, "iface_bytes": int(1.01 * PAYLOAD)},
            "metrics": {"iface_up_tx_bytes": up_tx, "iface_up_rx_bytes": 9000.0,
                        "iface_down_rx_bytes": 1.01 * PAYLOAD, "iface_down_tx_bytes": 9000.0,
                        "client_up_grpc_bytes": PAYLOAD + 300.0, "client_down_grpc_bytes": PAYLOAD + 300.0}}


def _render(run: Path) -> str:
    console = Console(record=True, width=400)
    assert report(run, console) == 0
    return console.export_text()


def test_an_old_run_folder_reports_protobuf_bytes_and_no_shared_interface_figure(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    recs = [_old_record("c-own", 1.02 * PAYLOAD), _old_record("c-shared", 3.2 * PAYLOAD)]
    (run / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in recs))
    out = _render(run)
    assert "protobuf MB" in out and "gRPC" not in out
    cells = [line.replace("│", " ").split() for line in out.splitlines()]
    rows = {tuple(c[:2]): " ".join(c) for c in cells if c[:1] in (["c-own"], ["c-shared"])}
    assert "0.510" in rows[("c-own", "up")] and "shared" not in rows[("c-own", "up")]
    shared = rows[("c-shared", "up")]
    assert "shared (its interface carried 3.20x the transfer's protobuf bytes" in shared
    assert "1.600" not in shared  # the polluted figure is not printed
    assert "0.505" in rows[("c-shared", "down")]  # its download was its own
    assert "wire/payload overall: up shared (" in out


def test_the_coordinator_records_the_verdict_and_no_figure_for_a_shared_interface(tmp_path):
    runlog = RunLog(tmp_path / "run")
    plans = {c: Instruction(pb.Plan(), {}) for c in ("c0", "c1")}
    r = Round(1, 0, plans, {}, 0.0, 0.0, accepted={"c0": 1.0, "c1": 1.0})
    own = {"client_up_protobuf_bytes": PAYLOAD + 300.0, "client_down_protobuf_bytes": PAYLOAD + 300.0}
    r.reports = {"c0": {**own, "iface_up_tx_bytes": 1.02 * PAYLOAD, "iface_down_rx_bytes": 1.01 * PAYLOAD},
                 "c1": {**own, "iface_up_tx_bytes": 3.2 * PAYLOAD, "iface_down_rx_bytes": 1.01 * PAYLOAD}}
    moved = {c: TransferStats(2 * PAYLOAD, PAYLOAD, PAYLOAD + 300, 0.5) for c in ("c0", "c1")}
    write_clients(runlog, r, moved, moved)
    runlog.close()
    recs = {rec["client"]: rec for rec in read_records(runlog.metrics_path) if rec["type"] == "client"}
    assert recs["c0"]["up"]["iface_verdict"] == "exclusive" and recs["c0"]["up"]["iface_bytes"] == 510_000
    up = recs["c1"]["up"]
    assert (up["iface_verdict"], up["iface_bytes"], up["iface_counted_bytes"]) == ("shared", None, 1_600_000)
    assert up["iface_reason"].startswith("its interface carried 3.20x")
    s = summarize(list(recs.values()))
    assert s["bytes"]["up"]["iface_bytes"] is None and s["wire_overhead"]["up"] is None
    assert s["iface"]["up"]["verdict"] == "shared" and "1 of 2 transfers" in s["iface"]["up"]["reason"]
    assert s["per_client_iface"]["c0"]["up"]["verdict"] == "exclusive"
    assert s["bytes"]["down"]["iface_bytes"] == 1_010_000  # both downloads their own
