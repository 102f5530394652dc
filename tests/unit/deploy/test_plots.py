"""What the --plot charts draw: the metric per round against the MB and seconds spent up to it
(every attempt's bytes counted), bytes per client and round."""

from __future__ import annotations

import pytest

from fedlora.deploy.plots import PlotError, curve


def _client(rnd: int, cid: str, up: int, down: int, attempt: int = 0) -> dict:
    return {"type": "client", "round": rnd, "attempt": attempt, "client": cid, "status": "accepted",
            "up": {"payload_bytes": up, "iface_bytes": None}, "down": {"payload_bytes": down, "iface_bytes": None}}


def test_the_curve_counts_every_attempts_bytes_and_the_rounds_seconds():
    records = [
        {"type": "round", "round": 0, "test_accuracy": 0.2, "seconds": 0.0},
        _client(1, "a", 1_000_000, 500_000), _client(1, "b", 1_000_000, 500_000),
        {"type": "round", "round": 1, "test_accuracy": 0.5, "seconds": 10.0},
        _client(2, "a", 2_000_000, 0), {"type": "round_failed", "round": 2},  # a failed attempt
        _client(2, "a", 1_000_000, 1_000_000, attempt=1),
        {"type": "round", "round": 2, "test_accuracy": 0.7, "seconds": 4.0},
    ]
    c = curve(records)
    assert (c.metric, c.label) == ("test_accuracy", "test accuracy")
    assert c.rounds == [0, 1, 2] and c.values == [0.2, 0.5, 0.7]
    assert c.mb == pytest.approx([0.0, 3.0, 7.0])
    assert c.seconds == [0.0, 10.0, 14.0]
    assert c.client_bytes["a"] == {"up": {1: 1_000_000, 2: 3_000_000}, "down": {1: 500_000, 2: 1_000_000}}
    assert c.client_bytes["b"]["up"] == {1: 1_000_000}


def test_a_causal_run_is_labelled_exact_match_and_a_run_without_scores_draws_its_loss():
    causal = [{"type": "round", "round": 0, "test_accuracy": 0.0, "test_perplexity": 9.0, "test_loss": 2.2}]
    assert curve(causal).label == "test exact match"
    no_acc = [{"type": "round", "round": 0, "test_accuracy": float("nan"), "test_loss": 2.2}]
    assert (curve(no_acc).metric, curve(no_acc).values) == ("test_loss", [2.2])


def test_no_round_records_is_an_error():
    with pytest.raises(PlotError, match="no round records"):
        curve([{"type": "join", "client": "a"}])
