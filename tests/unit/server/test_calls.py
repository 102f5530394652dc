"""The calls a client may hold open: a limit per client and kind; no sockets."""

import pytest

from fedlora.common.errors import Refused, Status
from fedlora.server.calls import Calls


def test_a_client_past_its_limit_is_refused_resource_exhausted():
    calls = Calls()
    with calls.hold("a", "upload"), calls.hold("a", "upload"):
        with pytest.raises(Refused) as e:
            with calls.hold("a", "upload"):
                pass
    assert e.value.code == Status.RESOURCE_EXHAUSTED and "at most 2" in e.value.message


def test_limits_are_per_client_and_freed_when_the_call_ends():
    calls = Calls()
    with calls.hold("a", "probe"):
        with calls.hold("b", "probe"):  # another client is not affected
            pass
    with calls.hold("a", "probe"):  # the first one ended
        assert calls.open(("a", "probe")) == 1
    assert calls.open(("a", "probe")) == 0
