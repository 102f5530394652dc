"""SA-FedLoRA's rank budget: the schedule, the importance tracker, top-b selection, pruning."""

import pytest
import torch

from fedlora.methods.sa_fedlora.budget import BudgetSchedule, keep_top, prune
from fedlora.methods.sa_fedlora.importance import ImportanceEMA

SCHEDULES = [
    BudgetSchedule(b0=64, b_final=8, heating_rounds=3, cooling_rounds=10, curve="temperature"),
    BudgetSchedule(b0=64, b_final=8, heating_rounds=3, cooling_rounds=10, curve="cubic"),
    BudgetSchedule(b0=100, b_final=1, heating_rounds=0, cooling_rounds=7, curve="temperature", gamma=0.3),
    BudgetSchedule(b0=9, b_final=3, heating_rounds=2, cooling_rounds=1, curve="cubic"),
    BudgetSchedule(b0=5, b_final=5, heating_rounds=1, cooling_rounds=4),
]


# --- BudgetSchedule ---------------------------------------------------------------------


@pytest.mark.parametrize("s", SCHEDULES, ids=lambda s: f"{s.curve}-{s.b0}-{s.b_final}")
def test_schedule_is_b0_while_heating(s):
    assert [s.budget(t) for t in range(1, s.heating_rounds + 1)] == [s.b0] * s.heating_rounds


@pytest.mark.parametrize("s", SCHEDULES, ids=lambda s: f"{s.curve}-{s.b0}-{s.b_final}")
def test_schedule_is_b_final_at_end_of_cooling_and_after(s):
    last_cooling = s.heating_rounds + s.cooling_rounds
    assert s.budget(last_cooling) == s.b_final
    assert [s.budget(t) for t in range(last_cooling + 1, last_cooling + 20)] == [s.b_final] * 19


@pytest.mark.parametrize("s", SCHEDULES, ids=lambda s: f"{s.curve}-{s.b0}-{s.b_final}")
def test_schedule_is_non_increasing_over_the_whole_run(s):
    budgets = [s.budget(t) for t in range(1, s.heating_rounds + s.cooling_rounds + 10)]
    assert all(a >= b for a, b in zip(budgets, budgets[1:]))
    assert all(s.b_final <= b <= s.b0 for b in budgets)


def test_schedule_starts_cooling_right_after_heating():
    s = BudgetSchedule(b0=64, b_final=8, heating_rounds=3, cooling_rounds=10)
    assert s.budget(4) < 64


def test_temperature_and_cubic_curves_differ_mid_cooling():
    temp = BudgetSchedule(b0=64, b_final=8, heating_rounds=2, cooling_rounds=10, curve="temperature", gamma=0.7)
    cubic = BudgetSchedule(b0=64, b_final=8, heating_rounds=2, cooling_rounds=10, curve="cubic")
    k = 2  # cooling step, i.e. round heating_rounds + k
    frac = (0.7**k - 0.7**10) / (1 - 0.7**10)
    assert temp.budget(2 + k) == 8 + round(56 * frac) == 35
    assert cubic.budget(2 + k) == 8 + round(56 * (1 - k / 10) ** 3) == 37


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"b0": 4, "b_final": 8}, "b0"),
        ({"b0": 4, "b_final": 0}, "b_final"),
        ({"heating_rounds": -1}, "heating_rounds"),
        ({"cooling_rounds": -1}, "cooling_rounds"),
        ({"gamma": 0.0}, "gamma"),
        ({"gamma": 1.0}, "gamma"),
        ({"curve": "linear"}, "curve"),
    ],
)
def test_invalid_field_raises_value_error_naming_it(kwargs, field):
    args = {"b0": 16, "b_final": 4, "heating_rounds": 2, "cooling_rounds": 5, **kwargs}
    with pytest.raises(ValueError, match=field):
        BudgetSchedule(**args)


def test_round_zero_is_rejected():
    with pytest.raises(ValueError):
        SCHEDULES[0].budget(0)


# --- keep_top ---------------------------------------------------------------------------


def _scores():
    return {
        "q": torch.tensor([0.9, 0.1, 0.5, 0.3]),
        "v": torch.tensor([0.05, 0.02, 0.8]),
        "o": torch.tensor([0.01, 0.03]),
    }


def test_keep_top_keeps_exactly_the_budget():
    for budget in range(3, 10):
        kept = keep_top(_scores(), budget, min_rank=1)
        assert sum(len(v) for v in kept.values()) == budget


def test_keep_top_picks_highest_scores_beyond_the_floors():
    kept = keep_top(_scores(), 5, min_rank=1)
    # floors: q->0 (0.9), v->2 (0.8), o->1 (0.03); then the best two left: q2 (0.5), q3 (0.3)
    assert kept == {"q": [0, 2, 3], "v": [2], "o": [1]}


def test_keep_top_without_floors_is_global_top_b():
    kept = keep_top(_scores(), 3, min_rank=0)
    assert kept == {"q": [0, 2], "v": [2], "o": []}


def test_keep_top_honours_min_rank_floors_over_a_small_budget():
    kept = keep_top(_scores(), 1, min_rank=2)
    # floors (2 + 2 + 2 = 6) win over budget 1; each layer keeps its own best two
    assert kept == {"q": [0, 2], "v": [0, 2], "o": [0, 1]}


def test_keep_top_floor_is_capped_by_layer_length():
    kept = keep_top({"a": torch.tensor([1.0]), "b": torch.tensor([0.1, 0.2, 0.3])}, 0, min_rank=3)
    assert kept == {"a": [0], "b": [0, 1, 2]}


def test_keep_top_keeps_all_when_budget_exceeds_total():
    kept = keep_top(_scores(), 100)
    assert kept == {"q": [0, 1, 2, 3], "v": [0, 1, 2], "o": [0, 1]}


def test_keep_top_breaks_ties_by_layer_name_then_index():
    scores = {"b": torch.ones(3), "a": torch.ones(3)}
    assert keep_top(scores, 4, min_rank=0) == {"a": [0, 1, 2], "b": [0]}
    assert keep_top(scores, 2, min_rank=1) == {"a": [0], "b": [0]}
    assert keep_top(scores, 3, min_rank=1) == {"a": [0, 1], "b": [0]}


# --- prune ------------------------------------------------------------------------------


def test_prune_shapes_and_product_equal_sum_of_kept_rank_one_terms():
    g = torch.Generator().manual_seed(0)
    A, B = torch.randn(6, 5, generator=g), torch.randn(7, 6, generator=g)
    keep = [0, 3, 4]
    pa, pb = prune(A, B, keep)
    assert pa.shape == (3, 5) and pb.shape == (7, 3)
    assert pa.is_contiguous() and pb.is_contiguous()
    expected = sum(torch.outer(B[:, i], A[i, :]) for i in keep)
    torch.testing.assert_close(pb @ pa, expected)


def test_prune_returns_copies():
    A, B = torch.zeros(2, 3), torch.zeros(4, 2)
    pa, pb = prune(A, B, [0, 1])
    pa += 1
    pb += 1
    assert A.abs().sum() == 0 and B.abs().sum() == 0


# --- ImportanceEMA ----------------------------------------------------------------------


def _pair(r=2, d_in=3, d_out=4, seed=0):
    g = torch.Generator().manual_seed(seed)
    A = torch.nn.Parameter(torch.randn(r, d_in, generator=g))
    B = torch.nn.Parameter(torch.randn(d_out, r, generator=g))
    A.grad = torch.randn(r, d_in, generator=g)
    B.grad = torch.randn(d_out, r, generator=g)
    return A, B


def test_importance_after_one_update_matches_the_formula():
    b1, b2 = 0.85, 0.6
    A, B = _pair()
    ema = ImportanceEMA(beta1=b1, beta2=b2)
    ema.update({"layer": (A, B)})

    def elem(p):  # from zero state: I = (1-b1) s, U = (1-b2) |s - I|
        s = (p.detach() * p.grad).abs()
        i_bar = (1 - b1) * s
        u_bar = (1 - b2) * (s - i_bar).abs()
        return i_bar * u_bar

    expected = elem(A).mean(dim=1) + elem(B).mean(dim=0)
    got = ema.scores()["layer"]
    assert got.dtype == torch.float32 and got.shape == (2,)
    torch.testing.assert_close(got, expected)


def test_importance_skips_layers_without_grad():
    A, B = _pair()
    A2, B2 = _pair(seed=1)
    B2.grad = None
    ema = ImportanceEMA()
    ema.update({"with": (A, B), "without": (A2, B2)})
    assert set(ema.scores()) == {"with"}
