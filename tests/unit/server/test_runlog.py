"""The run folder's records when the disk refuses one: the run is told once, the reserve is
given back, the file keeps only whole records."""

import errno
import json

from fedlora.common import storage
from fedlora.server.runlog import LEVELS, RunLog, read_records, summarize


def test_a_refused_record_fails_the_run_once_and_frees_the_reserve(tmp_path, monkeypatch):
    runlog = RunLog(tmp_path / "run")
    told: list[str] = []
    runlog.on_error = told.append
    runlog.write("round", round=1)
    reserve = tmp_path / "run" / storage.RESERVE_NAME
    assert reserve.is_file()

    real = storage.os.write

    def full(fd, data):
        real(fd, bytes(data[:3]))  # part of the record lands, then the disk is full
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(storage.os, "write", full)
    runlog.write("round", round=2)
    runlog.write("round", round=3)  # dropped: the folder already failed
    monkeypatch.undo()
    assert told == [f"run folder {tmp_path / 'run'}: cannot write metrics.jsonl: no space left on device"]
    assert runlog.error == told[0] and not reserve.exists()
    assert [r["round"] for r in read_records(runlog.metrics_path)] == [1]
    assert runlog.metrics_path.read_text().endswith("}\n")  # no torn line
    runlog.write_json("summary.json", {"status": "failed", "error": runlog.error})
    assert json.loads((tmp_path / "run" / "summary.json").read_text())["error"] == told[0]
    runlog.close()


def test_start_up_is_the_last_coordinator_process_launch_to_its_first_round():
    """A resumed run's start-up is its new process's: the first round_start after the resume."""
    recs = [{"type": "round_start", "round": 1, "since_launch_s": 12.5},
            {"type": "round_start", "round": 2, "since_launch_s": 40.0},
            {"type": "resume", "completed": 1},
            {"type": "round_start", "round": 2, "since_launch_s": 9.25}]
    assert summarize(recs[:2])["seconds_to_first_round"] == 12.5
    assert summarize(recs)["seconds_to_first_round"] == 9.25
    assert summarize([])["seconds_to_first_round"] is None


def test_the_levels_are_named_for_what_they_count():
    """The third level is the sum of serialized protobuf messages (no gRPC prefix, no HTTP/2 or
    TLS framing): named so, not "gRPC bytes"."""
    assert LEVELS == ("tensor_bytes", "payload_bytes", "protobuf_bytes", "iface_bytes")


def test_a_run_folder_written_before_the_rename_reads_with_the_new_key(tmp_path):
    """metrics.jsonl from before the rename carries ``grpc_bytes`` (and the client's
    ``client_<dir>_grpc_bytes``): read back, they are ``protobuf_bytes``, summed as such."""
    old = {"type": "client", "round": 1, "attempt": 0, "client": "c0", "status": "accepted",
           "up": {"tensor_bytes": 400, "payload_bytes": 100, "grpc_bytes": 130, "seconds": 0.1,
                  "iface_bytes": None},
           "down": {"tensor_bytes": 800, "payload_bytes": 200, "grpc_bytes": 250, "seconds": 0.1,
                    "iface_bytes": None},
           "metrics": {"client_up_grpc_bytes": 130.0, "client_down_grpc_bytes": 250.0}}
    path = tmp_path / "metrics.jsonl"
    path.write_text(json.dumps(old) + "\n")
    (rec,) = read_records(path)
    assert (rec["up"]["protobuf_bytes"], rec["down"]["protobuf_bytes"]) == (130, 250)
    assert "grpc_bytes" not in rec["up"] and "grpc_bytes" not in rec["down"]
    assert rec["metrics"] == {"client_up_protobuf_bytes": 130.0, "client_down_protobuf_bytes": 250.0}
    totals = summarize([rec])["bytes"]
    assert (totals["up"]["protobuf_bytes"], totals["down"]["protobuf_bytes"]) == (130, 250)
