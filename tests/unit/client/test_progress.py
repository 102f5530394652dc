"""A client on a terminal draws a bar per stage of a round; anywhere else it draws nothing."""

from __future__ import annotations

import io

from rich.console import Console

from fedlora.client.progress import NO_BARS, Bars


def _terminal() -> tuple[Bars, io.StringIO]:
    out = io.StringIO()
    return Bars(Console(file=out, force_terminal=True, width=100, color_system=None)), out


def test_a_terminal_gets_a_bar_that_ends_at_the_stage_total():
    bars, out = _terminal()
    with bars.stage("round 2 training", 5, "steps") as advance:
        for done in range(1, 6):
            advance(done)
    assert bars.shown and "round 2 training" in out.getvalue() and "5/5 steps" in out.getvalue()


def test_a_transfer_bar_counts_bytes():
    bars, out = _terminal()
    with bars.stage("round 1 upload", 2_000_000) as advance:
        advance(2_000_000)
    assert "round 1 upload" in out.getvalue() and "2.0/2.0 MB" in out.getvalue()


def test_without_a_terminal_nothing_is_drawn_and_the_stage_still_runs():
    ran = []
    with NO_BARS.stage("round 1 download", 10) as advance:
        advance(10)
        ran.append(True)
    assert ran and not NO_BARS.shown


def test_a_piped_stderr_gets_no_bars(capsys):
    assert not Bars.for_stderr().shown  # pytest's captured stderr is not a terminal
