"""LEGEND planner: depth + rank ramp per device, equalising predicted round times."""

from __future__ import annotations

from dataclasses import replace

import pytest

from fedlora.methods.legend.planner import Device, lora_bytes, plan, predict_seconds, rank_ramp, uniform

L = 6
# A MiniLM-sized block: query and value projections adapted, 384 -> 384 each.
SHAPES = [[(384, 384), (384, 384)] for _ in range(L)]
R_MIN, R_MAX = 2, 16


def phone(cid: str, *, compute: float = 1.0, up: float = 2e6, down: float = 10e6, steps: int = 10) -> Device:
    """10 local steps; ~10 ms forward and ~20 ms backward per block per step; 2 MB/s up, 10 MB/s down;
    a 384 x 2 classifier head (fp32) travelling each way."""
    return Device(
        client_id=cid,
        forward_seconds=[0.010 * compute] * L,
        backward_seconds=[0.020 * compute] * L,
        fixed_seconds=0.030 * compute,
        steps=steps,
        up_bytes_per_second=up,
        down_bytes_per_second=down,
        memory_bytes=4 * 2**30,
        fixed_bytes=(384 * 2 + 2) * 4,
    )


def total_rank(p) -> int:
    return sum(sum(a.ranks) for a in p.values())


def spread(p) -> float:
    times = [a.predicted_seconds for a in p.values()]
    return max(times) - min(times)


# --------------------------------------------------------------------------- rank_ramp


def test_rank_ramp_full_depth_interpolates_from_r_min_to_r_max():
    # 2 + 14 * i / 5, rounded half up
    assert rank_ramp(L, L, R_MIN, R_MAX) == [2, 5, 8, 10, 13, 16]


def test_rank_ramp_is_zero_below_depth_and_non_decreasing_towards_output():
    for depth in range(1, L + 1):
        ranks = rank_ramp(depth, L, R_MIN, R_MAX)
        assert len(ranks) == L
        assert ranks[: L - depth] == [0] * (L - depth)
        adapted = ranks[L - depth :]
        assert adapted == sorted(adapted) and all(r >= R_MIN for r in adapted)
        assert ranks[-1] == R_MAX
        if depth > 1:
            assert adapted[0] == R_MIN


def test_rank_ramp_depth_one_puts_r_max_on_the_top_block_only():
    assert rank_ramp(1, L, R_MIN, R_MAX) == [0, 0, 0, 0, 0, R_MAX]


def test_rank_ramp_never_lowers_a_block_as_depth_grows():
    for depth in range(1, L):
        shallow, deep = rank_ramp(depth, L, R_MIN, R_MAX), rank_ramp(depth + 1, L, R_MIN, R_MAX)
        assert all(d >= s for s, d in zip(shallow, deep)) and sum(deep) > sum(shallow)


# --------------------------------------------------------------------------- bytes and time


def test_lora_bytes_is_rank_times_d_in_plus_d_out_per_module():
    ranks = [0, 0, 0, 0, 4, 8]
    assert lora_bytes(ranks, SHAPES) == (4 + 8) * 2 * (384 + 384) * 4 == 73728
    assert lora_bytes(ranks, SHAPES, bytes_per_param=2) == 73728 // 2


def test_predict_seconds_is_steps_times_compute_plus_bytes_over_bandwidth():
    dev = phone("a")
    ranks = rank_ramp(2, L, R_MIN, R_MAX)
    payload = lora_bytes(ranks, SHAPES) + dev.fixed_bytes
    expected = 10 * (6 * 0.010 + 2 * 0.020 + 0.030) + payload / 2e6 + payload / 10e6
    assert predict_seconds(dev, 2, ranks, SHAPES) == pytest.approx(expected)


def test_unknown_bandwidth_counts_as_no_transfer_time():
    dev = replace(phone("a"), up_bytes_per_second=0.0, down_bytes_per_second=0.0)
    ranks = rank_ramp(L, L, R_MIN, R_MAX)
    assert predict_seconds(dev, L, ranks, SHAPES) == pytest.approx(10 * (0.06 + 0.12 + 0.03))


# --------------------------------------------------------------------------- plan


def test_slow_link_device_uploads_less_than_fast_one():
    fast, slow = phone("fast"), phone("slow", up=2e4, down=1e5)  # same compute, 1/100 bandwidth
    p = plan([fast, slow], SHAPES, r_min=R_MIN, r_max=R_MAX)
    assert p["slow"].upload_bytes < p["fast"].upload_bytes
    assert p["slow"].depth < p["fast"].depth


def test_predicted_times_spread_less_than_uniform_rank():
    devices = [phone("fast"), phone("slow-cpu", compute=4.0), phone("slow-link", up=2e4, down=1e5)]
    legend = plan(devices, SHAPES, r_min=R_MIN, r_max=R_MAX)
    baseline = uniform(devices, SHAPES, rank=8)
    assert all(a.depth == L and a.ranks == [8] * L for a in baseline.values())
    assert spread(legend) < spread(baseline)
    assert max(a.predicted_seconds for a in legend.values()) < max(a.predicted_seconds for a in baseline.values())


def test_deadline_is_respected_where_feasible():
    devices = [phone("a"), phone("b", compute=1.25), phone("c", compute=1.5)]
    free = plan(devices, SHAPES, r_min=R_MIN, r_max=R_MAX)
    smallest = rank_ramp(1, L, R_MIN, R_MAX)
    floor = max(predict_seconds(d, 1, smallest, SHAPES) for d in devices)
    target = max(a.predicted_seconds for a in free.values())
    deadline = 1.9  # every smallest config fits, the unconstrained target does not
    assert floor < deadline < target
    p = plan(devices, SHAPES, r_min=R_MIN, r_max=R_MAX, deadline_s=deadline)
    assert all(a.predicted_seconds <= deadline for a in p.values())
    assert any(p[c].depth < free[c].depth for c in p)


def test_device_that_cannot_meet_the_target_gets_its_smallest_config():
    devices = [phone("a"), phone("crawler", compute=10.0)]
    p = plan(devices, SHAPES, r_min=R_MIN, r_max=R_MAX, min_depth=2, deadline_s=3.0)
    assert p["crawler"].depth == 2 and p["crawler"].ranks == rank_ramp(2, L, R_MIN, R_MAX)
    assert p["crawler"].predicted_seconds > 3.0
    assert p["a"].predicted_seconds <= 3.0


def test_budget_tie_steps_down_the_smaller_client_id_once_and_stops():
    devices = [phone("b"), phone("a")]  # identical: same time, same total rank
    free = plan(devices, SHAPES, r_min=R_MIN, r_max=R_MAX)
    assert all(a.depth == L for a in free.values())
    p = plan(devices, SHAPES, r_min=R_MIN, r_max=R_MAX, budget=total_rank(free) - 1)
    assert (p["a"].depth, p["b"].depth) == (L - 1, L)
    assert total_rank(p) <= total_rank(free) - 1


def test_budget_steps_down_the_slowest_device_first():
    devices = [phone("a"), phone("b", compute=1.1), phone("c", compute=1.2)]
    free = plan(devices, SHAPES, r_min=R_MIN, r_max=R_MAX)
    slowest = max(free, key=lambda c: free[c].predicted_seconds)
    p = plan(devices, SHAPES, r_min=R_MIN, r_max=R_MAX, budget=total_rank(free) - 1)
    assert p[slowest].depth == free[slowest].depth - 1
    assert all(p[c] == free[c] for c in free if c != slowest)


def test_budget_plan_is_deterministic_and_order_independent():
    devices = [phone("a"), phone("b", compute=1.3), phone("c", up=2e5), phone("d", compute=2.0)]
    kw = dict(r_min=R_MIN, r_max=R_MAX, budget=100)
    p1 = plan(devices, SHAPES, **kw)
    assert p1 == plan(devices, SHAPES, **kw) == plan(devices[::-1], SHAPES, **kw)
    assert total_rank(p1) <= 100


def test_unreachable_budget_leaves_every_device_at_min_depth():
    devices = [phone("a"), phone("b", compute=2.0)]
    p = plan(devices, SHAPES, r_min=R_MIN, r_max=R_MAX, min_depth=2, budget=0)
    assert all(a.depth == 2 for a in p.values())


# --------------------------------------------------------------------------- validation


@pytest.mark.parametrize(
    ("args", "kwargs", "field"),
    [
        (([phone("a")], []), dict(r_min=2, r_max=16), "shapes"),
        (([phone("a")], SHAPES), dict(r_min=2, r_max=16, min_depth=0), "min_depth"),
        (([phone("a")], SHAPES), dict(r_min=2, r_max=16, min_depth=L + 1), "min_depth"),
        (([phone("a")], SHAPES), dict(r_min=0, r_max=16), "r_min"),
        (([phone("a")], SHAPES), dict(r_min=8, r_max=4), "r_max"),
        (([phone("a")], SHAPES), dict(r_min=2, r_max=16, deadline_s=0.0), "deadline_s"),
        (([phone("a")], SHAPES), dict(r_min=2, r_max=16, budget=-1), "budget"),
        (([replace(phone("bad"), forward_seconds=[0.01] * (L - 1))], SHAPES), dict(r_min=2, r_max=16), "forward_seconds"),
        (([replace(phone("bad"), backward_seconds=[-0.02] * L)], SHAPES), dict(r_min=2, r_max=16), "backward_seconds"),
        (([replace(phone("bad"), fixed_seconds=-1.0)], SHAPES), dict(r_min=2, r_max=16), "fixed_seconds"),
        (([replace(phone("bad"), up_bytes_per_second=-1.0)], SHAPES), dict(r_min=2, r_max=16), "up_bytes_per_second"),
        (([phone("a"), phone("a")], SHAPES), dict(r_min=2, r_max=16), "client_id"),
    ],
)
def test_bad_inputs_raise_value_error_naming_the_field(args, kwargs, field):
    with pytest.raises(ValueError, match=field):
        plan(*args, **kwargs)


def test_bad_device_error_names_the_client():
    bad = replace(phone("client-7"), backward_seconds=[0.02] * (L + 1))
    with pytest.raises(ValueError, match="client-7"):
        plan([phone("a"), bad], SHAPES, r_min=2, r_max=16)


def test_rank_ramp_rejects_depth_out_of_range():
    with pytest.raises(ValueError, match="depth"):
        rank_ramp(L + 1, L, R_MIN, R_MAX)
