"""LEGEND's client half and strategy: the profile refreshed with a round's evidence, the plan's
prediction recorded per client, and the aggregation weights."""

from __future__ import annotations

import pytest

from fedlora.common.wire.stats import TransferStats
from fedlora.methods.legend.client import LegendClient
from fedlora.proto.v1 import fedlora_pb2 as pb

L = 6
FWD, BWD, FIXED, BATCH = 0.05, 0.10, 0.10, 32  # seconds per block per step of BATCH examples
STEPS = 30


def join_profile() -> pb.DeviceProfile:
    """What a client measures at join: every block's forward and backward (backward through
    every block: the full-depth step), link rates from the probe."""
    p = pb.DeviceProfile(num_examples=500, upload_bytes_per_second=1e6, download_bytes_per_second=4e6)
    for i in range(L):
        p.layer_seconds[f"fwd.{i}"] = FWD
        p.layer_seconds[f"bwd.{i}"] = BWD
    p.layer_seconds["fixed"] = FIXED
    p.layer_seconds["step"] = L * FWD + L * BWD + FIXED
    p.layer_seconds["batch"] = BATCH
    return p


def step_at(depth: int, slow: float = 1.0) -> float:
    """The true seconds of one step at ``depth`` on a device ``slow`` times slower than at join."""
    return slow * (L * FWD + depth * BWD + FIXED)


def predicted_step(p: pb.DeviceProfile, depth: int) -> float:
    """The planner's compute per step (methods/legend/planner.py: every block's forward, the
    top ``depth`` blocks' backward, the fixed part) from a profile's block times."""
    ls = p.layer_seconds
    return (sum(ls[f"fwd.{i}"] for i in range(L)) + sum(ls[f"bwd.{i}"] for i in range(L - depth, L))
            + ls["fixed"])


def client() -> LegendClient:
    c = LegendClient(ctx=None)  # round_profile reads no context
    c._profile = join_profile()
    return c


def play(c: LegendClient, depth: int, slow: float = 1.0) -> pb.DeviceProfile:
    """One round at ``depth`` whose steps take what they really take on the device."""
    plan = pb.Plan(round=1)
    plan.options["legend_depth"] = str(depth)
    train = STEPS * step_at(depth, slow)
    metrics = {"steps": float(STEPS), "examples_seen": float(STEPS * BATCH), "train_seconds": train,
               "round_seconds": train + 3.0}
    down = TransferStats(payload_bytes=1 << 20, seconds=1.0)
    up = TransferStats(payload_bytes=1 << 20, seconds=1.5)
    return c.round_profile(plan, metrics, down, up)


def test_a_shallow_rounds_evidence_predicts_that_depth_as_measured():
    """The bias of scaling every block by (depth-d step / full-depth step at join): depth 2 of 6
    was predicted at 0.36 s a step against 0.60 s measured, and stayed there round after round."""
    c = client()
    for _ in range(3):
        p = play(c, depth=2)
        assert predicted_step(p, 2) == pytest.approx(step_at(2), rel=1e-9)
    # nothing slowed down: the other depths keep the join measurement's times
    assert predicted_step(p, L) == pytest.approx(step_at(L), rel=1e-9)


@pytest.mark.parametrize("depth", [1, 2, 4, 6])
def test_one_depth_of_evidence_scales_the_join_shape_uniformly(depth):
    """A device twice as slow as at join, seen at one depth: that depth is predicted as
    measured, and so is every other (a uniform slow-down keeps the shape)."""
    c = client()
    p = play(c, depth, slow=2.0)
    for d in range(1, L + 1):
        assert predicted_step(p, d) == pytest.approx(step_at(d, slow=2.0), rel=1e-9)
    assert p.layer_seconds["step"] == pytest.approx(predicted_step(p, L))


def test_evidence_from_two_depths_fits_a_per_step_cost_the_join_missed():
    """The optimiser and data loading (not in the join measurement) add a constant per step,
    and LoRA training's backward is cheaper than the join's full backward: after rounds at two
    depths, every depth is predicted as it runs."""

    def true_step(d: int) -> float:
        return L * FWD + 0.5 * d * BWD + FIXED + 0.04

    c = client()
    plan_at = {}
    for depth in (2, 5):
        plan = pb.Plan(round=1)
        plan.options["legend_depth"] = str(depth)
        metrics = {"steps": float(STEPS), "examples_seen": float(STEPS * BATCH),
                   "train_seconds": STEPS * true_step(depth), "round_seconds": STEPS * true_step(depth) + 3}
        plan_at[depth] = c.round_profile(plan, metrics, TransferStats(), TransferStats())
    # after one depth: that depth exact, the others off
    assert predicted_step(plan_at[2], 2) == pytest.approx(true_step(2), rel=1e-9)
    assert predicted_step(plan_at[2], 5) != pytest.approx(true_step(5), rel=1e-3)
    for d in range(1, L + 1):
        assert predicted_step(plan_at[5], d) == pytest.approx(true_step(d), rel=1e-9)


def test_evidence_from_two_depths_after_a_slow_down():
    c = client()
    play(c, depth=2, slow=2.0)
    p = play(c, depth=L, slow=2.0)
    for d in range(1, L + 1):
        assert predicted_step(p, d) == pytest.approx(step_at(d, slow=2.0), rel=1e-9)


def test_inconsistent_depths_fall_back_to_the_latest_uniform_scale():
    """Noise: the deeper round measured faster than the shallower one. No negative backward:
    the latest depth is predicted as measured and the shape kept."""
    c = client()
    play(c, depth=2, slow=2.0)
    p = play(c, depth=L, slow=1.0)  # through both: a negative backward
    assert all(v >= 0 for v in p.layer_seconds.values())
    for d in range(1, L + 1):
        assert predicted_step(p, d) == pytest.approx(step_at(d), rel=1e-9)


def test_nearby_depths_fit_no_slope():
    """Depths 5 and 6 differ by one block's backward (10% of the step): a slope through them
    would turn the steps' noise into a backward several times too dear or too cheap. The latest
    scales the shape uniformly instead."""
    c = client()
    play(c, depth=5, slow=1.0)
    p = play(c, depth=6, slow=1.2)
    for d in range(1, L + 1):
        assert predicted_step(p, d) == pytest.approx(step_at(d, slow=1.2), rel=1e-9)


def test_a_plan_without_a_depth_counts_as_full_depth():
    c = client()
    plan = pb.Plan(round=1)
    train = STEPS * step_at(L, slow=3.0)
    p = c.round_profile(plan, {"steps": float(STEPS), "examples_seen": float(STEPS * BATCH),
                               "train_seconds": train}, TransferStats(), TransferStats())
    assert predicted_step(p, L) == pytest.approx(step_at(L, slow=3.0), rel=1e-9)


def test_the_refreshed_profile_keeps_link_rates_and_adds_the_rounds():
    c = client()
    p = play(c, depth=2)
    assert p.upload_bytes_per_second == pytest.approx((1 << 20) / 1.5)
    assert p.download_bytes_per_second == pytest.approx(1 << 20)
    assert p.num_examples == 500
    assert p.layer_seconds["round_overhead"] == pytest.approx(3.0 - 1.0 - 1.5)


# --------------------------------------------------------------------------- the strategy

TASK_NAME = "classification"


def strategy(tiny_model, cls=None, **cfg_kw):
    from fedlora.common.config import ServerConfig
    from fedlora.common.model import AdaptedModel
    from fedlora.common.tasks import get_task
    from fedlora.methods.legend.strategy import Legend

    cls = cls or Legend
    task = get_task(TASK_NAME)
    cfg = ServerConfig(model=str(tiny_model), strategy=cls.name, adapter={"rank": 4, "alpha": 8.0},
                       training={"max_steps": 2, "batch_size": BATCH}, **cfg_kw)
    return cls(cfg, AdaptedModel(task.load_base(str(tiny_model), 6, cfg.seed), cls.adapter_spec(cfg),
                                 task.peft_task_type))


def tiny_profile(blocks: int, slow: float = 1.0, examples: int = 100) -> pb.DeviceProfile:
    p = pb.DeviceProfile(num_examples=examples, upload_bytes_per_second=1e5 / slow,
                         download_bytes_per_second=4e5)
    for i in range(blocks):
        p.layer_seconds[f"fwd.{i}"] = 0.01 * slow
        p.layer_seconds[f"bwd.{i}"] = 0.02 * slow
    p.layer_seconds.update({"fixed": 0.005 * slow, "batch": BATCH, "round_overhead": 0.5})
    return p


def test_legend_plans_carry_the_planners_prediction_by_part(tiny_model):
    from fedlora.server.strategy import ClientInfo

    s = strategy(tiny_model)
    n = len(s.shapes)
    clients = [ClientInfo("fast", 0, 100, tiny_profile(n)), ClientInfo("slow", 1, 100, tiny_profile(n, 4.0))]
    out = s.configure(1, clients)
    for cid, inst in out.items():
        a = s.assignments[cid]
        pred = inst.prediction
        assert set(pred) == {"round_seconds", "train_seconds", "upload_seconds", "download_seconds",
                             "overhead_seconds"}
        assert pred["round_seconds"] == pytest.approx(a.predicted_seconds)
        assert pred["round_seconds"] == pytest.approx(sum(v for k, v in pred.items() if k != "round_seconds"))
        assert pred["overhead_seconds"] == pytest.approx(0.5)  # the profile's, once, not per step
        assert pred["upload_seconds"] == pytest.approx(a.upload_bytes / clients[cid == "slow"].profile.upload_bytes_per_second)
        assert float(inst.plan.options["legend_predicted_seconds"]) == pytest.approx(a.predicted_seconds, abs=1e-3)


def test_the_engine_records_a_plans_prediction_beside_the_measured_seconds(tiny_model, tmp_path):
    from fedlora.server import records
    from fedlora.server.rounds import Round
    from fedlora.server.runlog import RunLog, read_records
    from fedlora.server.strategy import ClientInfo, Instruction

    s = strategy(tiny_model)
    n = len(s.shapes)
    insts = s.configure(1, [ClientInfo("a", 0, 100, tiny_profile(n))])
    insts["b"] = Instruction(pb.Plan(round=1), {})  # a plan without a prediction (another method)
    r = Round(1, 0, insts, {}, 0.0, 0.0)
    r.accepted = {"a": 100.0, "b": 50.0}
    r.reports = {"a": {"round_seconds": 10.0, "train_seconds": 6.0, "client_up_seconds": 1.5,
                       "client_down_seconds": 0.5}, "b": {"round_seconds": 3.0}}
    log = RunLog(tmp_path / "run")
    records.write_clients(log, r, {}, {})
    log.close()
    recs = {rec["client"]: rec for rec in read_records(tmp_path / "run" / "metrics.jsonl") if rec["type"] == "client"}
    a = recs["a"]
    assert a["predicted"] == {k: round(v, 4) for k, v in insts["a"].prediction.items()}
    assert a["measured"] == {"round_seconds": 10.0, "train_seconds": 6.0, "upload_seconds": 1.5,
                             "download_seconds": 0.5, "overhead_seconds": 2.0}
    assert "predicted" not in recs["b"] and "measured" not in recs["b"]


def test_legend_with_the_hetlora_rule_weighs_by_examples_by_default(tiny_model):
    """docs/methods.md: LEGEND aggregates each layer weighted by p_k, whichever rule combines
    the ranks; ranks.weighting: norm still asks for the HetLoRA paper's weights."""
    import torch

    from fedlora.methods.hetlora.strategy import HetLoRA
    from fedlora.server.strategy import ClientInfo

    assert strategy(tiny_model).weighting == "examples"
    assert strategy(tiny_model, ranks={"rule": "hetlora", "weighting": "norm"}).weighting == "norm"
    assert strategy(tiny_model, HetLoRA).weighting == "norm"  # HetLoRA's own: the paper's

    s = strategy(tiny_model, ranks={"rule": "hetlora"})
    n = len(s.shapes)
    clients = [ClientInfo("a", 0, 100, tiny_profile(n)), ClientInfo("b", 1, 300, tiny_profile(n))]
    insts = s.configure(1, clients)
    assert s.assignments["a"].ranks == s.assignments["b"].ranks  # same profile, same plan
    for c, v in zip(clients, (1.0, 2.0)):  # b's factors twice a's: its norm is 4x a's
        s.fold(1, c, {name: torch.full(shape, v, dtype=dt) for name, (shape, dt) in insts[c.id].expected.items()},
               float(c.num_examples))
    s.aggregate(1)
    path = max(s._sent["a"], key=lambda p: s.block_of[p])  # a layer of the top block
    rank = s._sent["a"][path]
    A = s.model.parameter(s.pairs[path][0]).detach()
    assert torch.allclose(A[:rank], torch.full_like(A[:rank], (100 * 1.0 + 300 * 2.0) / 400))
