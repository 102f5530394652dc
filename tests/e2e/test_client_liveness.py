"""The coordinator knows which clients are alive: a client SIGKILLed mid-round is given up after
``client_timeout_s`` (not at the round's deadline) and not planned again; one live process per
client id, and a restarted client gets its id back once the old process has been silent past
the timeout."""

from __future__ import annotations

import signal

import pytest

from procs import finish, recorded, records, start_client, start_server, tail, wait_until
from proxy import CutProxy

TIMEOUT_S = 8.0    # client_timeout_s: small, so the tests do not wait long (not so small that
# a live client's heartbeats, every TIMEOUT_S / 4, miss it on a loaded machine)
DEADLINE_S = 900   # far longer than any of these runs may take: waiting for it fails the test


@pytest.fixture(scope="module")
def killed(tmp_path_factory, tiny_model):
    run_dir = tmp_path_factory.mktemp("killed") / "run"
    server, address = start_server(run_dir, {
        "model": str(tiny_model), "rounds": 3, "min_clients": 2, "clients": 3, "seed": 2,
        "deadline_s": DEADLINE_S, "client_timeout_s": TIMEOUT_S,
        "chunk_bytes": 1024,  # uploads of several chunks: the proxy holds one after its first
        "training": {"max_steps": 20, "batch_size": 8}})
    # client-2's round-1 upload is held back by a proxy, so it is killed before its update can
    # be accepted, however fast its training
    proxy = CutProxy(address)
    proxy.hold_upload(1)
    clients = [start_client(run_dir, proxy.address if i == 2 else address, f"client-{i}")
               for i in range(3)]
    try:
        wait_until("client-2's round-1 upload held", proxy.held.is_set, 300, [server])
        clients[2].send_signal(signal.SIGKILL)
        clients[2].wait()
        proxy.release()
        codes = finish([server, clients[0], clients[1]], timeout=300)
    finally:
        for p in [server, *clients]:
            if p.poll() is None:
                p.kill()
        proxy.close()
    assert codes == [0, 0, 0], tail(run_dir / "logs" / "coordinator.log")
    return run_dir


def test_the_round_settles_with_the_others_once_the_killed_client_is_silent(killed):
    (rec,) = [r for r in records(killed, "client") if r["round"] == 1 and r["client"] == "client-2"]
    assert rec["status"] == "missing" and "no call or heartbeat" in rec["reason"]
    (r1,) = [r for r in records(killed, "round") if r["round"] == 1]
    assert r1["accepted"] == 2 and r1["missing"] == ["client-2"]
    assert r1["seconds"] < DEADLINE_S  # it did not wait for the deadline
    assert recorded(killed, "lost", client="client-2")


def test_later_rounds_do_not_plan_the_dead_client(killed):
    starts = [r for r in records(killed, "round_start") if r["round"] > 1]
    assert [(r["round"], r["clients"]) for r in starts] == [
        (2, ["client-0", "client-1"]), (3, ["client-0", "client-1"])]
    assert not records(killed, "round_failed")


@pytest.fixture(scope="module")
def duplicated(tmp_path_factory, tiny_model):
    run_dir = tmp_path_factory.mktemp("dup") / "run"
    logs = run_dir / "logs"
    server, address = start_server(run_dir, {
        "model": str(tiny_model), "rounds": 1, "min_clients": 2, "clients": 2, "seed": 4,
        "client_timeout_s": TIMEOUT_S, "training": {"max_steps": 2, "batch_size": 8}})
    first = start_client(run_dir, address, "client-0")
    procs = [server, first]
    try:
        wait_until("client-0 to join", lambda: recorded(run_dir, "join", client="client-0"), 300,
                   procs)
        second = start_client(run_dir, address, "client-0")  # the same id, another process
        procs.append(second)
        second_code = finish([second], timeout=300)[0]
        first.send_signal(signal.SIGKILL)
        wait_until("the coordinator to give client-0 up",
                   lambda: recorded(run_dir, "lost", client="client-0"), 120, [server])
        joins_before = len(recorded(run_dir, "join", client="client-0"))
        restarted = start_client(run_dir, address, "client-0")
        other = start_client(run_dir, address, "client-1")
        procs += [restarted, other]
        codes = finish([server, restarted, other], timeout=300)
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
    assert codes == [0, 0, 0], tail(logs / "coordinator.log")
    return run_dir, second_code, joins_before


def test_a_second_process_with_a_live_id_is_refused_and_exits_2(duplicated):
    run_dir, second_code, _ = duplicated
    assert second_code == 2
    log = (run_dir / "logs" / "client-0.log").read_text()
    refusals = [line for line in log.splitlines() if "ALREADY_EXISTS" in line]
    assert len(refusals) == 1 and "client id 'client-0' is in use" in refusals[0]


def test_the_first_process_kept_its_session(duplicated):
    run_dir, _, joins_before = duplicated
    assert joins_before == 1  # the refused join replaced nothing


def test_a_restarted_client_gets_its_id_back_once_the_old_process_is_silent(duplicated):
    run_dir, _, _ = duplicated
    assert len(recorded(run_dir, "join", client="client-0")) == 2
    (r1,) = [r for r in records(run_dir, "round") if r["round"] == 1]
    assert r1["accepted"] == 2
