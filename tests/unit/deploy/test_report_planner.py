"""``fedlora report`` and the benchmarks' planner error: predicted beside measured seconds per
client and round, and the error per round and per depth, from a run's records."""

from __future__ import annotations

import json

import pytest
from rich.console import Console

from fedlora.deploy.report import planner_error, planner_lines, planner_rows, report


def client(rnd: int, cid: str, pred: float, meas: float, pred_train: float, meas_train: float,
           status: str = "accepted") -> dict:
    return {"type": "client", "round": rnd, "attempt": 0, "client": cid, "status": status,
            "up": {"payload_bytes": 10, "seconds": 0.1}, "down": {"payload_bytes": 10, "seconds": 0.1},
            "metrics": {"round_seconds": meas},
            "predicted": {"round_seconds": pred, "train_seconds": pred_train, "upload_seconds": 0.5,
                          "download_seconds": 0.1, "overhead_seconds": 1.0},
            "measured": {"round_seconds": meas, "train_seconds": meas_train, "upload_seconds": 0.4,
                         "download_seconds": 0.1, "overhead_seconds": 1.2}}


def round_rec(rnd: int, depths: dict[str, int]) -> dict:
    return {"type": "round", "round": rnd, "attempt": 0,
            "strategy": {"planned": {c: {"depth": d, "block_ranks": [0] * (6 - d) + [8] * d,
                                         "predicted_seconds": 0.0, "uniform_predicted_seconds": 9.0}
                                     for c, d in depths.items()}}}


RECORDS = [
    # round 1: from the join profile; round 2: refreshed
    client(1, "a", 8.0, 10.0, 6.0, 8.0), client(1, "b", 15.0, 10.0, 12.0, 8.0),
    client(1, "c", 5.0, 10.0, 4.0, 8.0, status="missing"),  # no update: not counted
    round_rec(1, {"a": 2, "b": 6, "c": 2}),
    client(2, "a", 9.0, 10.0, 7.5, 8.0), client(2, "b", 11.0, 10.0, 8.0, 8.0),
    round_rec(2, {"a": 2, "b": 6}),
]


def test_rows_pair_each_accepted_clients_prediction_with_its_measurement_and_depth():
    rows = planner_rows(RECORDS)
    assert [(x["round"], x["client"], x["depth"]) for x in rows] == [(1, "a", 2), (1, "b", 6), (2, "a", 2),
                                                                      (2, "b", 6)]
    assert rows[0]["predicted"]["round_seconds"] == 8.0 and rows[0]["measured"]["round_seconds"] == 10.0
    assert rows[0]["block_ranks"] == [0, 0, 0, 0, 8, 8] and rows[0]["uniform_predicted_seconds"] == 9.0


def test_the_error_per_round_and_per_depth():
    err = planner_error(planner_rows(RECORDS))
    r1, r2 = err["per_round"]["1"]["round"], err["per_round"]["2"]["round"]
    assert r1 == {"n": 2, "mean": pytest.approx(0.15), "mean_abs": pytest.approx(0.35), "max_abs": pytest.approx(0.5)}
    assert r2 == {"n": 2, "mean": pytest.approx(0.0), "mean_abs": pytest.approx(0.1), "max_abs": pytest.approx(0.1)}
    d2 = err["per_depth"]["2"]
    assert d2["round"]["mean"] == pytest.approx((-0.2 - 0.1) / 2)  # depth 2 under-predicted
    assert d2["train"]["mean"] == pytest.approx((-0.25 - 0.0625) / 2, abs=1e-4)
    assert err["per_depth"]["6"]["train"]["max_abs"] == pytest.approx(0.5)
    assert err["all"]["round"]["n"] == 4
    lines = planner_lines(err)
    assert lines[2].startswith("| round 1 | 2 | +15% | 35% | 50% |")
    assert any(line.startswith("| depth 2 | 2 | -15% |") for line in lines)
    assert lines[-1].startswith("| all | 4 |")


def test_a_run_recorded_before_predictions_in_client_records_reads_the_round_records():
    old = [{"type": "client", "round": 1, "attempt": 0, "client": "a", "status": "accepted",
            "metrics": {"round_seconds": 4.0}},
           {"type": "round", "round": 1, "attempt": 0,
            "strategy": {"planned": {"a": {"depth": 1, "predicted_seconds": 3.0}}}}]
    (row,) = planner_rows(old)
    assert row["predicted"] == {"round_seconds": 3.0} and row["measured"] == {"round_seconds": 4.0}
    err = planner_error([row])
    assert err["per_depth"]["1"]["round"]["mean"] == pytest.approx(-0.25)
    assert err["per_depth"]["1"]["train"] is None


def test_methods_without_predictions_give_no_rows():
    assert planner_rows([{"type": "client", "round": 1, "attempt": 0, "client": "a", "status": "accepted",
                          "metrics": {"round_seconds": 4.0}}, {"type": "round", "round": 1, "strategy": {}}]) == []


def test_fedlora_report_prints_the_planner_error(tmp_path):
    (tmp_path / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in RECORDS))
    console = Console(record=True, width=200)
    assert report(tmp_path, console) == 0
    text = console.export_text()
    assert "planned vs measured seconds" in text and "| depth 6 | 2 |" in text


def _bench_compare():
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parents[3] / "bench" / "compare.py"
    spec = importlib.util.spec_from_file_location("bench_compare", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_the_benchmark_keeps_and_prints_the_planners_predictions(tmp_path, capsys):
    """bench/compare.py's results.json row holds the predictions beside the measured seconds
    (bench/heterogeneous-result.json had none, so the planner's error could not be checked)."""
    compare = _bench_compare()
    records = [{"type": "round", "round": 0, "time": 1.0, "test_accuracy": 0.2, "up_mb": 0.0, "down_mb": 0.0},
               *RECORDS]
    for r in records:
        r.setdefault("time", 2.0)
    (tmp_path / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    (tmp_path / "summary.json").write_text(json.dumps({"final_accuracy": 0.9, "mb_up": 1.0, "mb_down": 2.0,
                                                       "elapsed_seconds": 30.0}))
    row = compare.collect("legend", ["--strategy", "legend"], tmp_path)
    assert row["planner_rows"] == planner_rows(RECORDS)
    assert row["planner_error"] == planner_error(planner_rows(RECORDS))
    json.dumps(row)  # results.json
    compare.print_planner("legend", [{**row, "seed": 0}, {**row, "seed": 1}])
    out = capsys.readouterr().out
    assert "| 0 | 1 | a | 2 | 8.00 | 10.00 | -20% | 6.00 | 8.00 |" in out
    assert "| 1 | 1 | a | 2 | 8.00 | 10.00 | -20% | 6.00 | 8.00 |" in out
    seed_0, pooled = out.split("\nseed 0\n")[1], out.split("\npooled over seeds 0,1\n")[1]
    assert "| depth 2 | 2 | -15% | 15% | 20% |" in seed_0
    assert "| depth 2 | 4 | -15% | 15% | 20% |" in pooled  # both seeds' rows

    plain = [r for r in records if r["type"] == "round"] + [
        {"type": "client", "round": 1, "attempt": 0, "client": "a", "status": "accepted", "metrics": {}}]
    (tmp_path / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in plain))
    assert "planner_rows" not in compare.collect("fedavg-lora", [], tmp_path)


def test_the_benchmark_summarises_each_configuration_over_its_seeds():
    """One seed's point is noise: a configuration's row gives mean, sample std and range over
    its seeds, and how many seeds reached the target (time and MB over those that did)."""
    compare = _bench_compare()

    def row(seed: int, acc: float, seconds: float, curve: list) -> dict:
        return {"config": "c", "seed": seed, "final_accuracy": acc, "mb_up": 1.0, "mb_down": 2.0,
                "wall_seconds": seconds, "max_epsilon": None, "curve": curve}

    rows = [row(0, 0.80, 100.0, [(0.0, 0.2, 0.0), (3.0, 0.85, 50.0)]),
            row(1, 0.86, 120.0, [(0.0, 0.2, 0.0), (3.0, 0.70, 40.0), (6.0, 0.9, 90.0)]),
            row(2, 0.92, 140.0, [(0.0, 0.2, 0.0), (3.0, 0.75, 45.0)])]
    s = compare.summarise(rows, target=0.8)
    assert s["seeds"] == [0, 1, 2]
    assert s["final_accuracy"]["mean"] == pytest.approx(0.86)
    assert s["final_accuracy"]["std"] == pytest.approx(0.06)  # sample std: n - 1
    assert (s["final_accuracy"]["min"], s["final_accuracy"]["max"]) == (0.80, 0.92)
    assert s["reached"] == "2/3"
    assert s["seconds_to_target"]["mean"] == pytest.approx(70.0) and s["mb_to_target"]["max"] == 6.0
    assert compare.fmt(s["wall_seconds"], 1) == "120.0 ± 20.0 [100.0-140.0]"
    assert compare.fmt(compare.spread([5.0]), 1) == "5.0 (1 seed)"
