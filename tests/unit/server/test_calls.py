"""Calls that hold a coordinator thread: a limit per client and kind, and idle streams
cancelled; no sockets."""

import pytest

from fedlora.common.errors import Refused, Status
from fedlora.server.calls import LIMITS, RESERVE, Calls


class Clock:
    def __init__(self) -> None:
        self.t = 0.0

    def __call__(self) -> float:
        return self.t


def test_a_client_past_its_limit_is_refused_resource_exhausted():
    calls = Calls(30.0)
    with calls.hold("a", "upload"), calls.hold("a", "upload"):
        with pytest.raises(Refused) as e:
            with calls.hold("a", "upload"):
                pass
    assert e.value.code == Status.RESOURCE_EXHAUSTED and "at most 2" in e.value.message


def test_limits_are_per_client_and_freed_when_the_call_ends():
    calls = Calls(30.0)
    with calls.hold("a", "probe"):
        with calls.hold("b", "probe"):  # another client is not affected
            pass
    with calls.hold("a", "probe"):  # the first one ended
        assert calls.open(("a", "probe")) == 1
    assert calls.open(("a", "probe")) == 0


def test_a_stream_idle_for_stream_idle_s_is_cancelled_once():
    clock = Clock()
    calls = Calls(10.0, clock=clock)
    cancelled = []
    with calls.stream("a", "upload", lambda: cancelled.append("a")) as st:
        clock.t = 9.0
        assert calls.reap() == []
        calls.moved(st)  # a message moved: idle from now on
        clock.t = 18.0
        assert calls.reap() == []
        clock.t = 19.0
        assert calls.reap() == [st] and cancelled == ["a"]
        clock.t = 40.0
        assert calls.reap() == [] and cancelled == ["a"]


def test_an_ended_stream_is_not_watched():
    clock = Clock()
    calls = Calls(1.0, clock=clock)
    with calls.stream("a", "upload", lambda: pytest.fail("cancelled after its end")):
        pass
    clock.t = 5.0
    assert calls.reap() == []


def test_the_pool_has_every_clients_limits_and_a_reserve():
    assert Calls.pool_size(10) == 10 * sum(LIMITS.values()) + RESERVE
