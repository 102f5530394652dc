"""A coordinator that stands still for 75 s (SIGSTOP, then SIGCONT) is a passing state for
its clients: the one training and the ones long-polling keep retrying, nobody exits, nobody is
given up (the coordinator does not count its own stall as their silence), and the run completes.
"""

from __future__ import annotations

import signal
import time

import pytest

from procs import finish, logged, recorded, records, start_client, start_server, tail, wait_until

CLIENTS = ["client-0", "client-1", "client-2"]
STALL_S = 75  # past a long poll's whole life (its wait, then its call timeout): every client
# has a call fail during the stall, whenever its last poll began


pytestmark = pytest.mark.slow  # about two minutes and a half, 75 s of them the stall


@pytest.fixture(scope="module")
def stalled(tmp_path_factory, tiny_model):
    run_dir = tmp_path_factory.mktemp("stall") / "run"
    # one client per round (fraction x 3 < 1): one trains while the other two long-poll
    server, address = start_server(run_dir, {
        "model": str(tiny_model), "rounds": 2, "min_clients": 1, "fraction": 0.3, "clients": 3,
        "seed": 6, "deadline_s": 600, "client_timeout_s": 20,
        "training": {"max_steps": 20, "batch_size": 8}})
    clients = [start_client(run_dir, address, c, verbose=True) for c in CLIENTS]
    procs = [server, *clients]
    try:
        (start,) = wait_until("round 1 to start", lambda: recorded(run_dir, "round_start", round=1),
                              300, procs)
        (trainer,) = start["clients"]
        wait_until(f"{trainer} to train", lambda: logged(run_dir / "logs" / f"{trainer}.log",
                                                         "round 1: training"), 120, procs)
        server.send_signal(signal.SIGSTOP)
        time.sleep(STALL_S)
        alive_during_stall = [p.poll() is None for p in clients]
        server.send_signal(signal.SIGCONT)
        codes = finish(procs, timeout=400)
    finally:
        for p in procs:
            if p.poll() is None:
                p.send_signal(signal.SIGCONT)
                p.kill()
    assert codes == [0, 0, 0, 0], "\n".join(tail(run_dir / "logs" / f"{n}.log")
                                            for n in ["coordinator", *CLIENTS])
    return run_dir, trainer, alive_during_stall


def test_every_client_lives_through_the_stall_and_the_run_completes(stalled):
    run_dir, _, alive = stalled
    assert alive == [True, True, True]
    assert [r["round"] for r in records(run_dir, "round") if r["round"] > 0] == [1, 2]
    assert not records(run_dir, "round_failed")


def test_the_stall_is_not_counted_as_the_clients_silence(stalled):
    run_dir, trainer, _ = stalled
    assert not records(run_dir, "lost")
    (rec,) = [r for r in records(run_dir, "client") if r["round"] == 1]
    assert rec["client"] == trainer and rec["status"] == "accepted"
    assert "stood still for" in (run_dir / "logs" / "coordinator.log").read_text()


def test_the_clients_retried_instead_of_giving_up(stalled):
    run_dir, _, _ = stalled
    for c in CLIENTS:
        log = (run_dir / "logs" / f"{c}.log").read_text()
        assert "retrying in" in log, c
        assert "ERROR" not in log, c
