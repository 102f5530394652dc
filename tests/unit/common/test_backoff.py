"""Backoff between retries: grows, stays under the cap, is jittered, starts over on reset."""

import random

import pytest

from fedlora.common.backoff import Backoff


def test_delays_stay_within_a_ceiling_that_doubles_up_to_the_cap():
    b = Backoff(first_s=0.5, cap_s=4.0, rng=random.Random(0))
    ceilings = []
    for _ in range(8):
        ceilings.append(b.ceiling())
        assert 0.0 <= b.next() <= ceilings[-1]
    assert ceilings == [0.5, 1.0, 2.0, 4.0, 4.0, 4.0, 4.0, 4.0]


def test_delays_are_jittered():
    b = Backoff(first_s=1.0, cap_s=1.0, rng=random.Random(1))
    assert len({round(b.next(), 6) for _ in range(20)}) == 20


def test_reset_starts_over_from_the_first_delay():
    b = Backoff(first_s=0.5, cap_s=8.0, rng=random.Random(2))
    for _ in range(5):
        b.next()
    b.reset()
    assert b.ceiling() == 0.5


def test_many_failures_never_overflow_the_cap():
    b = Backoff(first_s=0.5, cap_s=10.0)
    b.attempt = 10_000
    assert b.next() <= 10.0


@pytest.mark.parametrize("first, cap", [(0.0, 1.0), (2.0, 1.0)])
def test_bounds_must_make_sense(first, cap):
    with pytest.raises(ValueError):
        Backoff(first_s=first, cap_s=cap)
