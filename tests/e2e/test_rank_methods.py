"""Rank-varying methods end to end (coordinator + 3 client processes, tiny model, 3 rounds):
FlexLoRA with a rank per client, SA-FedLoRA's annealed budget, LEGEND's planned depths."""

from __future__ import annotations

import json
import re

import pytest
from safetensors.torch import load_file

from fedlora.common.wire.blob import unpack
from fedlora.common.model import lora_pairs
from fedlora.methods.ranked import layer_order
from fedlora.methods.sa_fedlora.importance import IMPORTANCE_PREFIX
from procs import finish, records, start_client, start_server, tail

CLIENTS = ["client-0", "client-1", "client-2"]
R_MAX = 8


def _run(tmp_path_factory, tiny_model, strategy: str, extra: dict, rounds: int = 3):
    run_dir = tmp_path_factory.mktemp(strategy) / "run"
    server, address = start_server(run_dir, {
        "model": str(tiny_model), "strategy": strategy, "rounds": rounds, "min_clients": 3, "seed": 6,
        "clients": len(CLIENTS), "adapter": {"rank": R_MAX, "alpha": 16},
        "training": {"max_steps": 3, "batch_size": 16, "learning_rate": 0.01}, **extra})
    clients = [start_client(run_dir, address, c) for c in CLIENTS]
    codes = finish([server, *clients], timeout=400)
    assert codes == [0, 0, 0, 0], tail(run_dir / "logs" / "coordinator.log")
    rounds_ = [r for r in records(run_dir, "round") if r["round"] > 0]
    assert len(rounds_) == rounds
    return run_dir, rounds_


def _sent_ranks(run_dir, cid: str) -> list[int]:
    """Per-layer ranks of what the client really sent last, in layer order."""
    tensors, _ = unpack((run_dir / "state" / cid / "last-upload.safetensors").read_bytes())
    pairs = lora_pairs(tensors)
    for a, b in pairs.values():
        assert tensors[a].shape[0] == tensors[b].shape[1]
    return [tensors[pairs[p][0]].shape[0] for p in sorted(pairs, key=layer_order)]


@pytest.fixture(scope="module")
def flex_run(tmp_path_factory, tiny_model):
    return _run(tmp_path_factory, tiny_model, "flexlora", {})


def test_flexlora_clients_train_at_their_own_ranks_and_send_exactly_those(flex_run):
    run_dir, rounds = flex_run
    ranks = rounds[-1]["strategy"]["client_ranks"]
    assert {cid: set(r["ranks"]) for cid, r in ranks.items()} == {
        "client-0": {8}, "client-1": {4}, "client-2": {2}}  # the default cycle r, r/2, r/4 by partition
    for cid in CLIENTS:
        assert _sent_ranks(run_dir, cid) == ranks[cid]["ranks"]


def test_flexlora_final_adapter_is_a_standard_peft_adapter_at_r_max(flex_run):
    run_dir, _ = flex_run
    adapter = load_file(str(run_dir / "adapter" / "adapter_model.safetensors"))
    config = json.loads((run_dir / "adapter" / "adapter_config.json").read_text())
    assert config["r"] == R_MAX
    assert all(adapter[a].shape[0] == R_MAX for a, _ in lora_pairs(adapter).values())


def test_smaller_ranks_upload_fewer_bytes(flex_run):
    run_dir, _ = flex_run
    last = max(r["round"] for r in records(run_dir, "client"))
    up = {r["client"]: r["up"]["tensor_bytes"] for r in records(run_dir, "client") if r["round"] == last}
    assert up["client-0"] > up["client-1"] > up["client-2"]


@pytest.fixture(scope="module")
def sa_run(tmp_path_factory, tiny_model):
    return _run(tmp_path_factory, tiny_model, "sa-fedlora", {"sa_fedlora": {
        "initiating_rounds": 1, "heating_rounds": 0, "cooling_rounds": 2, "final_rank": 1,
        "prox_mu": 0.5}})


def test_sa_fedlora_budget_anneals_to_its_final_value(sa_run):
    _, rounds = sa_run
    totals = [r["strategy"]["total_rank_next"] for r in rounds]
    assert totals == sorted(totals, reverse=True)
    assert [r["strategy"]["budget_next"] for r in rounds][-2:] == [4, 4]  # 1 per layer x 4 layers
    assert totals[-1] == 4 and rounds[0]["strategy"]["client_ranks"]["client-0"]["total"] == 4 * R_MAX


def test_sa_fedlora_clients_send_the_planned_per_layer_ranks_and_their_importance(sa_run):
    run_dir, rounds = sa_run
    planned = rounds[-1]["strategy"]["client_ranks"]
    for cid in CLIENTS:
        assert _sent_ranks(run_dir, cid) == planned[cid]["ranks"]
        tensors, _ = unpack((run_dir / "state" / cid / "last-upload.safetensors").read_bytes())
        scores = {n: t for n, t in tensors.items() if n.startswith(IMPORTANCE_PREFIX)}
        assert sorted(t.numel() for t in scores.values()) == sorted(planned[cid]["ranks"])


def test_sa_fedlora_pruned_ranks_vanish_from_the_wire(sa_run):
    run_dir, _ = sa_run
    by_round: dict[int, list[int]] = {}
    for r in records(run_dir, "client"):
        by_round.setdefault(r["round"], []).append(r["up"]["tensor_bytes"])
    sizes = [max(by_round[k]) for k in sorted(by_round)]
    assert sizes[-1] < sizes[0] and sizes == sorted(sizes, reverse=True)


def test_sa_fedlora_initiating_stage_trains_with_the_proximal_term(sa_run):
    run_dir, _ = sa_run
    log = (run_dir / "logs" / "client-0.log").read_text()
    assert re.search(r"round 1: loss [0-9.]+, prox_mu 0\.5,", log)
    assert not re.search(r"round 2: .*prox_mu", log)


@pytest.fixture(scope="module")
def legend_run(tmp_path_factory, tiny_model):
    return _run(tmp_path_factory, tiny_model, "legend",
                {"legend": {"r_min": 2}, "ranks": {"rule": "hetlora"},
                 "training": {"max_steps": 0, "epochs": 1, "batch_size": 64, "learning_rate": 0.01},
                 "data": {"dirichlet_alpha": 0.1}})


def test_legend_plans_depth_and_ranks_that_grow_towards_the_output(legend_run):
    _, rounds = legend_run
    for rnd in rounds:
        for cid, p in rnd["strategy"]["planned"].items():
            ranks = p["block_ranks"]
            assert sum(r > 0 for r in ranks) == p["depth"]
            assert ranks[-1] == R_MAX and ranks == sorted(ranks)  # LoRA on the top blocks only


def test_legend_clients_send_exactly_the_planned_layers(legend_run):
    run_dir, rounds = legend_run
    planned = rounds[-1]["strategy"]["client_ranks"]
    for cid in CLIENTS:
        assert _sent_ranks(run_dir, cid) == planned[cid]["ranks"]


def test_legend_logs_predicted_beside_measured_round_times(legend_run):
    run_dir, rounds = legend_run
    last = rounds[-1]
    for rec in records(run_dir, "client"):
        if rec["round"] == last["round"]:
            assert rec["metrics"]["round_seconds"] > 0
            assert last["strategy"]["planned"][rec["client"]]["predicted_seconds"] > 0
        # every client record: the plan's prediction by part beside the client's measurement
        pred, meas = rec["predicted"], rec["measured"]
        assert set(pred) == set(meas) == {"round_seconds", "train_seconds", "upload_seconds",
                                          "download_seconds", "overhead_seconds"}
        assert pred["train_seconds"] > 0 and meas["train_seconds"] > 0
        assert meas["round_seconds"] == rec["metrics"]["round_seconds"]
    profiles = [r for r in records(run_dir, "profile") if r["round"] > 0]
    assert profiles and all(any(k.startswith("bwd.") for k in p["profile"]["layer_seconds"]) for p in profiles)


def _join_rates(run_dir) -> dict[str, float]:
    """Each client's upload rate in its join-time profile (round 0's report), 0 where unprobed."""
    return {r["client"]: float(r["profile"].get("upload_bytes_per_second", 0.0))
            for r in records(run_dir, "profile") if r["round"] == 0}


def test_legend_clients_probe_their_link_at_join(legend_run):
    """LEGEND plans round times with link rates: its run spec asks for the join probe."""
    run_dir, _ = legend_run
    rates = _join_rates(run_dir)
    assert sorted(rates) == CLIENTS and all(v > 0 for v in rates.values())


def test_methods_that_plan_without_link_rates_skip_the_join_probe(flex_run):
    """FlexLoRA never reads a link rate: its clients go from join to round 1 without probing."""
    run_dir, _ = flex_run
    rates = _join_rates(run_dir)
    assert sorted(rates) == CLIENTS and all(v == 0 for v in rates.values())
    for cid in CLIENTS:
        assert "link probe" not in (run_dir / "logs" / f"{cid}.log").read_text()
