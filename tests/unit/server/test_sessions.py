"""Joining and sessions: who may join, with what token, and which session stays valid; no
sockets, no processes."""

import threading

import pytest

from fedlora.common.config import ClientEntry
from fedlora.common.errors import Refused, Status
from fedlora.proto.v1 import fedlora_pb2 as pb
from fedlora.server.runlog import RunLog, read_records
from fedlora.server.sessions import Sessions

PROFILE = pb.DeviceProfile(num_examples=10)


@pytest.fixture
def sessions(tmp_path) -> Sessions:
    entries = [ClientEntry(id="a", token="ta"), ClientEntry(id="b", token="tb"), ClientEntry(id="open")]
    runlog = RunLog(tmp_path / "run")
    yield Sessions(entries, pb.RunSpec(run_id="r", dataset="trec"), runlog, threading.Condition())
    runlog.close()


def refusal(call) -> Refused:
    with pytest.raises(Refused) as e:
        call()
    return e.value


def test_an_unknown_id_and_a_wrong_token_get_the_same_answer(sessions):
    unknown = refusal(lambda: sessions.join("eve", "ta", PROFILE))
    wrong = refusal(lambda: sessions.join("a", "tb", PROFILE))
    assert unknown.code == wrong.code == Status.UNAUTHENTICATED
    assert unknown.message.replace("'eve'", "ID") == wrong.message.replace("'a'", "ID")


@pytest.mark.parametrize("cid", ["..", ".", ".hidden", "a/b", "x" * 65, ""])
def test_a_malformed_id_gets_the_same_answer_as_an_unknown_one(sessions, cid):
    e = refusal(lambda: sessions.join(cid, "", PROFILE))
    assert e.code == Status.UNAUTHENTICATED and "unknown client id or wrong token" in e.message
    assert len(e.message) < 200


def test_a_client_configured_without_a_token_joins_with_any(sessions):
    assert sessions.join("open", "", PROFILE).session_id


def test_a_join_replies_with_the_spec_and_the_clients_partition(sessions):
    reply = sessions.join("b", "tb", PROFILE)
    assert reply.spec.run_id == "r" and reply.spec.partition == 1


def test_a_session_names_its_client(sessions):
    session = sessions.join("a", "ta", PROFILE).session_id
    assert sessions.check_session(session) == "a"


def test_an_unknown_session_is_unauthenticated(sessions):
    e = refusal(lambda: sessions.check_session("not-a-session"))
    assert e.code == Status.UNAUTHENTICATED and "join again" in e.message


def test_a_rejoin_invalidates_the_old_session(sessions):
    old = sessions.join("a", "ta", PROFILE).session_id
    new = sessions.join("a", "ta", PROFILE).session_id
    assert new != old and sessions.check_session(new) == "a"
    assert refusal(lambda: sessions.check_session(old)).code == Status.UNAUTHENTICATED


def test_an_ended_session_is_refused_and_its_client_not_ready(sessions):
    session = sessions.join("a", "ta", PROFILE).session_id
    sessions.join("b", "tb", PROFILE)
    sessions.end(sessions.client(session))
    assert refusal(lambda: sessions.check_session(session)).code == Status.UNAUTHENTICATED
    assert [c.entry.id for c in sessions.ready()] == ["b"]


def test_only_clients_that_declare_examples_are_ready(sessions):
    sessions.join("a", "ta", pb.DeviceProfile(num_examples=0))
    sessions.join("b", "tb", PROFILE)
    assert [c.entry.id for c in sessions.ready()] == ["b"]


def test_a_join_is_recorded_with_the_profile(sessions, tmp_path):
    sessions.join("a", "ta", pb.DeviceProfile(num_examples=7, accelerator="cpu"))
    (rec,) = [r for r in read_records(tmp_path / "run" / "metrics.jsonl") if r["type"] == "join"]
    assert rec["client"] == "a" and rec["partition"] == 0
    assert rec["profile"] == {"num_examples": "7", "accelerator": "cpu"}  # proto JSON: int64 as text


def test_a_join_wakes_whoever_waits_for_clients(sessions):
    woke = threading.Event()

    def waiter():
        with sessions.cond:
            if sessions.cond.wait_for(lambda: sessions.ready(), timeout=10):
                woke.set()

    t = threading.Thread(target=waiter)
    t.start()
    sessions.join("a", "ta", PROFILE)
    t.join(10)
    assert woke.is_set()


# ---------------------------------------------------------------- liveness
class FakeClock:
    """Seconds the coordinator was awake, moved by hand."""

    def __init__(self) -> None:
        self.t = 0.0

    def now(self) -> float:
        return self.t


@pytest.fixture
def timed(tmp_path):
    clock = FakeClock()
    runlog = RunLog(tmp_path / "run")
    s = Sessions([ClientEntry(id="a", token="ta"), ClientEntry(id="b", token="tb")],
                 pb.RunSpec(run_id="r", dataset="trec"), runlog, threading.Condition(),
                 timeout_s=10.0, clock=clock)
    yield s, clock
    runlog.close()


def test_a_second_process_with_a_live_id_is_refused_already_exists(timed):
    s, clock = timed
    first = s.join("a", "ta", PROFILE, instance="p1").session_id
    clock.t = 9.0
    e = refusal(lambda: s.join("a", "ta", PROFILE, instance="p2"))
    assert e.code == Status.ALREADY_EXISTS and "client id 'a'" in e.message
    assert "heard 9.0s ago" in e.message and "silent for 10s" in e.message
    assert s.check_session(first) == "a"  # the first keeps its session


def test_the_same_process_joining_again_gets_a_new_session(timed):
    s, _ = timed
    old = s.join("a", "ta", PROFILE, instance="p1").session_id
    new = s.join("a", "ta", PROFILE, instance="p1").session_id  # e.g. its join reply was lost
    assert new != old and s.check_session(new) == "a"


def test_a_restarted_process_gets_back_in_once_the_old_one_is_silent_past_the_timeout(timed):
    s, clock = timed
    s.join("a", "ta", PROFILE, instance="p1")
    clock.t = 10.5
    assert s.join("a", "ta", PROFILE, instance="p2").session_id


def test_every_call_with_the_session_keeps_it_live(timed):
    s, clock = timed
    session = s.join("a", "ta", PROFILE, instance="p1").session_id
    for t in (8.0, 16.0, 24.0):
        clock.t = t
        s.check_session(session)  # a heartbeat, a long poll, a report...
    clock.t = 32.0
    assert refusal(lambda: s.join("a", "ta", PROFILE, instance="p2")).code == Status.ALREADY_EXISTS


def test_a_chunk_of_a_transfer_counts_as_hearing_the_client(timed):
    s, clock = timed
    s.join("a", "ta", PROFILE, instance="p1")
    clock.t = 9.0
    s.heard("a")
    clock.t = 18.0
    assert [c.entry.id for c in s.ready()] == ["a"]


def test_a_silent_client_is_not_ready_to_plan(timed):
    s, clock = timed
    s.join("a", "ta", PROFILE)
    clock.t = 5.0
    s.join("b", "tb", PROFILE)
    clock.t = 12.0
    assert [c.entry.id for c in s.ready()] == ["b"]


def test_expire_ends_silent_sessions_only_and_records_them(timed, tmp_path):
    s, clock = timed
    a = s.join("a", "ta", PROFILE).session_id
    clock.t = 5.0
    b = s.join("b", "tb", PROFILE).session_id
    clock.t = 12.0
    assert s.expire() == [("a", 12.0)]
    assert refusal(lambda: s.check_session(a)).code == Status.UNAUTHENTICATED
    assert s.check_session(b) == "b"
    assert s.expire() == []
    (rec,) = [r for r in read_records(tmp_path / "run" / "metrics.jsonl") if r["type"] == "lost"]
    assert rec["client"] == "a" and rec["silent_s"] == 12.0


def test_the_join_reply_asks_for_heartbeats_well_within_the_timeout(timed):
    s, _ = timed
    assert s.join("a", "ta", PROFILE).spec.heartbeat_s == 2.5
