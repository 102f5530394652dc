"""A client's round-keyed state: round r starts from the newest state before r, only what a
redo needs is kept, and another run's files are never read."""

from __future__ import annotations

import torch

from fedlora.client.roundstate import RoundStore


def _t(v: float) -> dict[str, torch.Tensor]:
    return {"x": torch.full((3,), v)}


def test_a_round_starts_from_the_newest_state_before_it(tmp_path):
    s = RoundStore(tmp_path, "run-a")
    assert s.before(1) is None
    s.save(0, _t(0))
    s.save(1, _t(1))
    assert torch.equal(s.before(1)["x"], _t(0)["x"])  # round 1 again: from before it
    assert torch.equal(s.before(2)["x"], _t(1)["x"])
    s.save(3, _t(3))  # not sampled in round 2
    assert torch.equal(s.before(3)["x"], _t(1)["x"]) and torch.equal(s.latest()["x"], _t(3)["x"])


def test_saving_keeps_what_a_redo_needs_and_nothing_older(tmp_path):
    s = RoundStore(tmp_path, "run-a")
    for r in range(4):
        s.save(r, _t(r))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["round-00002.safetensors", "round-00003.safetensors"]


def test_another_runs_state_is_ignored_and_cleared(tmp_path):
    RoundStore(tmp_path, "run-a").save(5, _t(5))
    s = RoundStore(tmp_path, "run-b")
    assert s.before(9) is None and s.latest() is None
    s.save(1, _t(1))
    assert [p.name for p in tmp_path.iterdir()] == ["round-00001.safetensors"]
