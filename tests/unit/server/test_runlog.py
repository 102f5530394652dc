"""The run folder's records when the disk refuses one: the run is told once, the reserve is
given back, the file keeps only whole records."""

import errno
import json

from fedlora.common import storage
from fedlora.server.runlog import RunLog, read_records, summarize


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
