"""The run's journal: a committed round reads back whole, a crash's leftovers are ignored, and a
folder that cannot be resumed is refused with one line naming why."""

from __future__ import annotations

import json

import pytest
import torch

from fedlora.common.config import ConfigError, ServerConfig
from fedlora.server.journal import JOURNAL, Journal, config_changes
from fedlora.server.runlog import RunLog, read_records, summarize


def _cfg(run_dir, **kw) -> ServerConfig:
    return ServerConfig(run_dir=run_dir, insecure=True, rounds=4, **kw)


def _tensors(seed: int) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {"base_model.x.lora_A.weight": torch.randn(4, 8, generator=g),
            "products/x": torch.randn(8, 8, generator=g, dtype=torch.float64)}


def _run(run_dir, rounds_done: int, **kw) -> tuple[Journal, RunLog]:
    """A run that committed ``rounds_done`` rounds, each with a round record."""
    journal = Journal(run_dir)
    assert journal.open(_cfg(run_dir, **kw)) is None
    log = RunLog(run_dir, keep=(0, 0))
    journal.commit(0, _tensors(0), {}, log.sync())
    for rnd in range(1, rounds_done + 1):
        log.write("round", round=rnd, test_accuracy=0.5)
        journal.commit(rnd, _tensors(rnd), {"layer_ranks": {"x": rnd}}, log.sync())
    return journal, log


def test_a_committed_round_reads_back_bit_for_bit(tmp_path):
    _run(tmp_path, 2)
    again = Journal(tmp_path)
    entry = again.open(_cfg(tmp_path))
    assert entry is not None and entry.completed == 2 and entry.meta == {"layer_ranks": {"x": 2}}
    state = again.state(entry)
    for name, t in _tensors(2).items():
        assert torch.equal(state[name], t) and state[name].dtype == t.dtype
    assert again.run_id == entry.run_id and entry.run_id.startswith(tmp_path.name)
    assert sorted(p.name for p in (tmp_path / "journal").iterdir()) == ["state-00002.safetensors"]


def test_a_leftover_temp_file_is_ignored(tmp_path):
    _run(tmp_path, 1)
    (tmp_path / (JOURNAL + ".tmp")).write_text('{"format": 1, "completed": 3, "garbage"')
    (tmp_path / "journal" / "state-00002.safetensors.tmp").write_bytes(b"\0" * 10)
    entry = Journal(tmp_path).open(_cfg(tmp_path))
    assert entry is not None and entry.completed == 1


def test_resume_cuts_the_records_back_to_the_last_commit(tmp_path):
    _, log = _run(tmp_path, 2)
    log.write("round_start", round=3)
    log.write("upload", round=3, client="c")
    log.close()
    with open(tmp_path / "metrics.jsonl", "a") as f:
        f.write('{"type": "client", "rou')  # the crash cut a line short
    entry = Journal(tmp_path).open(_cfg(tmp_path))
    log = RunLog(tmp_path, keep=(entry.records_bytes, entry.records_count))
    log.write("round", round=3, test_accuracy=0.6)
    log.close()
    recs = read_records(tmp_path / "metrics.jsonl")
    assert [r["round"] for r in recs] == [1, 2, 3]
    assert summarize(recs)["rounds_completed"] == 3


def test_a_round_committed_before_its_evaluation_landed_comes_back_pending(tmp_path):
    """The round record waits for the evaluation (server/engine.py): the journal holds its
    fields, and its records end before the record, so a resumed run writes it once."""
    journal, log = _run(tmp_path, 1)
    log.write("client", round=2, client="c")
    fields = {"round": 2, "accepted": 1, "seconds": 1.5, "evaluated_by": None}
    journal.commit(2, _tensors(2), {}, log.sync(), pending=fields)
    log.write("round_start", round=3)  # the next round goes on beside the evaluation
    log.write("round", round=2, test_accuracy=0.7, **{k: v for k, v in fields.items() if k != "round"})
    log.close()
    entry = Journal(tmp_path).open(_cfg(tmp_path))
    assert entry is not None and entry.completed == 2 and entry.pending == fields
    log = RunLog(tmp_path, keep=(entry.records_bytes, entry.records_count))
    log.close()
    recs = read_records(tmp_path / "metrics.jsonl")
    assert [(r["type"], r["round"]) for r in recs] == [("round", 1), ("client", 2)]


def test_a_finished_run_is_refused(tmp_path):
    journal, _ = _run(tmp_path, 4)
    journal.finish()
    with pytest.raises(ConfigError, match=r"holds a finished run \(4 of 4 rounds\)") as e:
        Journal(tmp_path).open(_cfg(tmp_path))
    assert "\n" not in str(e.value)


def test_a_changed_config_is_refused_naming_the_fields(tmp_path):
    _run(tmp_path, 1)
    changed = ServerConfig(run_dir=tmp_path, insecure=True, rounds=5,
                           training={"learning_rate": 0.01})
    with pytest.raises(ConfigError) as e:
        Journal(tmp_path).open(changed)
    msg = str(e.value)
    assert f"config differs from the run in {tmp_path}" in msg
    assert "rounds (4 -> 5)" in msg and "training.learning_rate (0.005 -> 0.01)" in msg
    assert "\n" not in msg


def test_serving_fields_and_tokens_may_change(tmp_path):
    _run(tmp_path, 1, clients=[{"id": "a", "token": "x"}, {"id": "b", "token": "y"}], min_clients=1)
    moved = _cfg(tmp_path, clients=[{"id": "a", "token": "new"}, {"id": "b", "token": "y"}],
                 min_clients=1, port=6000, threads=2, deadline_s=10.0, host="0.0.0.0")
    assert Journal(tmp_path).open(moved).completed == 1


def test_config_changes_name_nested_and_missing_fields():
    old = {"rounds": 4, "training": {"learning_rate": 0.005, "dp": {"enabled": False}}, "port": 1}
    new = {"rounds": 4, "training": {"learning_rate": 0.005, "dp": {"enabled": True}}, "port": 2,
           "legend": {"r_min": 2}}
    assert config_changes(old, new) == ["legend (unset -> {\"r_min\":2})", "training.dp.enabled (false -> true)"]


def test_shortened_records_are_refused(tmp_path):
    _run(tmp_path, 2)
    lines = (tmp_path / "metrics.jsonl").read_text().splitlines(keepends=True)
    (tmp_path / "metrics.jsonl").write_text("".join(lines[:-1]))
    with pytest.raises(ConfigError, match="no longer holds the 2 records"):
        Journal(tmp_path).open(_cfg(tmp_path))


def test_records_without_a_journal_are_refused(tmp_path):
    (tmp_path / "metrics.jsonl").write_text(json.dumps({"type": "round", "round": 0}) + "\n")
    with pytest.raises(ConfigError, match="no journal"):
        Journal(tmp_path).open(_cfg(tmp_path))


def test_a_damaged_state_file_is_refused(tmp_path):
    _run(tmp_path, 1)
    path = tmp_path / "journal" / "state-00001.safetensors"
    data = bytearray(path.read_bytes())
    data[-1] ^= 0xFF
    path.write_bytes(bytes(data))
    journal = Journal(tmp_path)
    with pytest.raises(ConfigError, match="does not match its digest"):
        journal.state(journal.open(_cfg(tmp_path)))


def test_the_cli_refuses_a_changed_config_in_one_line_with_exit_2(tmp_path, capsys):
    from fedlora.deploy.cli import main

    _run(tmp_path, 1)
    code = main(["server", "--insecure", "--open-run", "--run-dir", str(tmp_path), "--rounds", "5",
                 "--lr", "0.01"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and "\n" not in err
    assert err.endswith("rounds (4 -> 5), training.learning_rate (0.005 -> 0.01)")


def test_the_journal_keeps_no_client_token_and_a_resume_with_rotated_tokens_goes_on(tmp_path):
    """The run folder may be read by more people than the clients' owners: the journal holds the
    config with every token redacted (tokens are not part of what a resume compares)."""
    clients = [{"id": "a", "token": "secret-a-1"}, {"id": "b", "token": "secret-b-1"}]
    _run(tmp_path, 1, clients=clients)
    assert "secret-" not in (tmp_path / JOURNAL).read_text()
    rotated = [{"id": "a", "token": "secret-a-2"}, {"id": "b", "token": "secret-b-2"}]
    entry = Journal(tmp_path).open(_cfg(tmp_path, clients=rotated))
    assert entry is not None and entry.completed == 1


def test_committing_a_round_makes_no_copy_of_the_state(tmp_path):
    """A full model's state goes to the file a tensor at a time: saving it must not double the
    coordinator's memory (safetensors.torch.save held two copies of it)."""
    import tracemalloc

    journal = Journal(tmp_path)
    journal.open(_cfg(tmp_path))
    state = {f"model.layers.{i}.weight": torch.ones(1 << 18) for i in range(8)}  # 8 MiB
    tracemalloc.start()
    try:
        entry = journal.commit(0, state, {}, (0, 0))
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < (1 << 20)
    assert all(torch.equal(v, state[k]) for k, v in journal.state(entry).items())
