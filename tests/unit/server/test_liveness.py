"""The coordinator's awake clock: time it stood still is not counted as the clients' silence."""

from fedlora.server.liveness import AwakeClock


class Raw:
    def __init__(self) -> None:
        self.t = 100.0

    def __call__(self) -> float:
        return self.t


def test_time_advances_with_the_raw_clock_while_read_often():
    raw = Raw()
    clock = AwakeClock(raw, stall_gap_s=3.0)
    start = clock.now()
    for _ in range(10):
        raw.t += 1.0
        clock.now()
    assert clock.now() - start == 10.0 and clock.stalled_s == 0.0


def test_a_gap_longer_than_the_stall_gap_is_left_out():
    raw = Raw()
    clock = AwakeClock(raw, stall_gap_s=3.0)
    start = clock.now()
    raw.t += 60.0  # SIGSTOP for a minute: nobody could reach the coordinator
    assert clock.now() - start == 0.0 and clock.stalled_s == 60.0
    raw.t += 2.0
    assert clock.now() - start == 2.0

