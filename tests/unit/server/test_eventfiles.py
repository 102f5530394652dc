"""TensorBoard event files follow the run's records: the tags and steps of each round, a
sub-run per client, each round once after a resume, and a run that goes on when they cannot
be written."""

from __future__ import annotations

from fedlora.server.eventfiles import FOLDER, attach
from fedlora.server.runlog import LEVELS, RunLog, read_records
from tbevents import scalars


def _bytes(n: int, iface: int | None) -> dict:
    return {"tensor_bytes": n, "payload_bytes": n // 2, "protobuf_bytes": n // 2 + 10, "seconds": 0.5,
            "iface_bytes": iface}


def _play(runlog: RunLog, rnd: int, acc: float, clients=("client-0", "client-1")) -> None:
    """The records one round leaves, as server/records.py writes them."""
    runlog.write("round_start", round=rnd, attempt=0, planned=len(clients))
    for i, cid in enumerate(clients):
        runlog.write("client", round=rnd, attempt=0, client=cid, status="accepted", weight=10.0,
                     up=_bytes(1000 * (i + 1), 600), down=_bytes(2000, None),
                     train_loss=0.5, local_accuracy=0.8,
                     metrics={"train_loss": 0.5, "local_accuracy": 0.8 + i / 10, "steps": 3.0})
    runlog.write("round", round=rnd, attempt=0, planned=len(clients), accepted=len(clients),
                 test_accuracy=acc, test_loss=0.4, train_loss=0.5, seconds=2.5,
                 personal_accuracy=0.85, dp_epsilon=None, refused=[])


def _start(run_dir, keep=None) -> tuple[RunLog, object]:
    runlog = RunLog(run_dir, keep=keep)
    return runlog, attach(runlog)


def test_each_round_writes_test_metrics_bytes_and_a_sub_run_per_client(tmp_path):
    runlog, events = _start(tmp_path / "run")
    runlog.write("round", round=0, test_accuracy=0.2, test_loss=1.7, test_perplexity=5.5,
                 planned=0, accepted=0, seconds=0.0, up_mb=0.0, down_mb=0.0)
    _play(runlog, 1, 0.5)
    _play(runlog, 2, float("nan"))  # a score nobody computed is left out, not drawn as 0
    events.close()
    runlog.close()
    got = scalars(tmp_path / "run" / FOLDER)
    assert set(got) == {".", "clients/client-0", "clients/client-1"}
    main = got["."]
    assert main["test/accuracy"] == [(0, 0.2), (1, 0.5)]
    assert [s for s, _ in main["test/loss"]] == [0, 1, 2]
    assert main["test/perplexity"] == [(0, 5.5)]
    assert main["round/seconds"] == [(0, 0.0), (1, 2.5), (2, 2.5)]
    assert "round/dp_epsilon" not in main
    # bytes per round: summed over the clients; a level an accepted client could not measure
    # (interface bytes down) is left out, not drawn as a partial sum
    assert main["bytes/up/tensor_bytes"] == [(1, 3000.0), (2, 3000.0)]
    assert main["bytes/up/payload_bytes"] == [(1, 1500.0), (2, 1500.0)]
    assert main["bytes/up/iface_bytes"] == [(1, 1200.0), (2, 1200.0)]
    assert main["bytes/down/protobuf_bytes"] == [(1, 2020.0), (2, 2020.0)]
    assert "bytes/down/iface_bytes" not in main
    assert {t for t in main if t.startswith("bytes/")} == (
        {f"bytes/{d}/{lvl}" for d in ("up", "down") for lvl in LEVELS} - {"bytes/down/iface_bytes"})
    c1 = got["clients/client-1"]
    assert c1["client/bytes/up/tensor_bytes"] == [(1, 2000.0), (2, 2000.0)]
    assert c1["client/seconds/down"] == [(1, 0.5), (2, 0.5)]
    assert c1["client/local_accuracy"] == [(1, 0.9), (2, 0.9)]
    assert [s for s, _ in c1["client/steps"]] == [1, 2]
    assert "client/bytes/down/iface_bytes" not in c1


def test_a_resumed_run_shows_each_round_once(tmp_path):
    """The crashed coordinator recorded round 2 but did not journal it: the resumed one cuts
    metrics.jsonl back to round 1 and plays round 2 again; the event files hold it once, as
    played the second time."""
    runlog, _ = _start(tmp_path / "run")
    runlog.write("round", round=0, test_accuracy=0.2, test_loss=1.7)
    _play(runlog, 1, 0.5)
    keep = runlog.sync()  # the journal's last commit
    _play(runlog, 2, 0.6)  # then the crash: no close
    runlog, events = _start(tmp_path / "run", keep=keep)
    runlog.write("resume", completed=1, round=2)
    _play(runlog, 2, 0.7)
    _play(runlog, 3, 0.8, clients=("client-0",))
    events.close()
    runlog.close()
    got = scalars(tmp_path / "run" / FOLDER)
    assert got["."]["test/accuracy"] == [(0, 0.2), (1, 0.5), (2, 0.7), (3, 0.8)]
    assert [s for s, _ in got["."]["bytes/up/payload_bytes"]] == [1, 2, 3]
    assert [s for s, _ in got["clients/client-0"]["client/bytes/up/payload_bytes"]] == [1, 2, 3]
    assert [s for s, _ in got["clients/client-1"]["client/bytes/up/payload_bytes"]] == [1, 2]


def test_event_files_that_cannot_be_written_leave_the_run_and_its_records_alone(tmp_path):
    runlog, events = _start(tmp_path / "run")
    (tmp_path / "run" / FOLDER).write_text("a file where the folder goes")
    _play(runlog, 1, 0.5)
    _play(runlog, 2, 0.6)
    events.close()
    runlog.close()
    assert not runlog.error
    assert [r["round"] for r in read_records(runlog.metrics_path) if r["type"] == "round"] == [1, 2]
