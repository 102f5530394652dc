"""The client's retries, rejoins and resumable uploads against a scripted coordinator; no
sockets, no sleeping (the clock is moved by the waits it would have done)."""

from __future__ import annotations

import grpc
import pytest

from fedlora.client.transport import CallRefused, Connection, CoordinatorLost, TransferFailed
from fedlora.common.wire.blob import Blob
from fedlora.common.wire.chunks import sha256
from fedlora.common.wire.protocol import RETRY_MAX_S, SESSION_METADATA
from fedlora.proto.v1 import fedlora_pb2 as pb

S = grpc.StatusCode


class Failure(grpc.RpcError):
    def __init__(self, code: grpc.StatusCode, details: str = ""):
        self._code, self._details = code, details

    def code(self) -> grpc.StatusCode:
        return self._code

    def details(self) -> str:
        return self._details


class Coordinator:
    """A stub whose calls answer from scripts: an exception is raised, anything else returned."""

    def __init__(self) -> None:
        self.joins: list[pb.JoinRequest] = []
        self.sessions = 0
        self.scripts: dict[str, list] = {}
        self.seen: dict[str, list] = {}
        self.uploads: list[list[pb.UploadChunk]] = []
        self.upload_metadata: list = []

    def _answer(self, name: str, request):
        self.seen.setdefault(name, []).append(request)
        script = self.scripts.get(name, [])
        out = script.pop(0) if script else None
        if isinstance(out, Exception):
            raise out
        return out

    def Join(self, request, timeout=None, wait_for_ready=None):
        self.joins.append(request)
        out = self._answer("Join", request)
        if out is not None:
            return out
        self.sessions += 1
        return pb.JoinReply(session_id=f"s{self.sessions}", spec=pb.RunSpec(heartbeat_s=5))

    def GetTask(self, request, timeout=None):
        return self._answer("GetTask", request) or pb.Task(kind=pb.Task.WAIT)

    def UploadStatus(self, request, timeout=None):
        return self._answer("UploadStatus", request) or pb.UploadStatusReply()

    def Upload(self, chunks, timeout=None, metadata=()):
        self.upload_metadata.append(metadata)
        self.uploads.append(list(chunks))
        return self._answer("Upload", self.uploads[-1]) or pb.UploadReply(complete=True)


class Clock:
    def __init__(self) -> None:
        self.t = 0.0
        self.waits: list[float] = []

    def __call__(self) -> float:
        return self.t

    def sleep(self, s: float) -> None:
        self.waits.append(s)
        self.t += s


@pytest.fixture
def coord() -> Coordinator:
    return Coordinator()


@pytest.fixture
def clock() -> Clock:
    return Clock()


def connect(coord: Coordinator, clock: Clock, **kw) -> Connection:
    conn = Connection("127.0.0.1:1", stub=coord, clock=clock, sleep=clock.sleep,
                      **{"coordinator_timeout_s": 600.0, "no_progress_timeout_s": 120.0, **kw})
    conn.join("c", "t", pb.DeviceProfile(num_examples=3))
    return conn


def test_an_unavailable_coordinator_is_retried_with_capped_waits(coord, clock):
    conn = connect(coord, clock)
    coord.scripts["GetTask"] = [Failure(S.UNAVAILABLE)] * 12 + [Failure(S.DEADLINE_EXCEEDED),
                                                               pb.Task(kind=pb.Task.DONE)]
    assert conn.task(0).kind == pb.Task.DONE
    assert len(clock.waits) == 13 and max(clock.waits) <= RETRY_MAX_S


def test_a_forgotten_session_is_joined_again_by_the_same_process(coord, clock):
    conn = connect(coord, clock)
    coord.scripts["GetTask"] = [Failure(S.UNAUTHENTICATED, "unknown or expired session"),
                                pb.Task(kind=pb.Task.DONE)]
    conn.profile = pb.DeviceProfile(num_examples=7)
    assert conn.task(0).kind == pb.Task.DONE
    first, again = coord.joins
    assert again.instance == first.instance != ""
    assert again.profile.num_examples == 7  # the latest profile, so it is ready to plan at once
    assert [r.session_id for r in coord.seen["GetTask"]] == ["s1", "s2"]


def test_it_gives_up_after_the_coordinator_timeout_without_an_answer(coord, clock):
    conn = connect(coord, clock, coordinator_timeout_s=60.0)
    coord.scripts["GetTask"] = [Failure(S.UNAVAILABLE, "connection refused")] * 1000
    with pytest.raises(CoordinatorLost) as e:
        conn.task(0)
    assert "127.0.0.1:1" in str(e.value) and "coordinator_timeout_s=60" in str(e.value)
    assert "UNAVAILABLE: connection refused" in str(e.value)
    assert 60.0 < clock.t <= 60.0 + RETRY_MAX_S


def test_an_answer_resets_the_time_without_the_coordinator(coord, clock):
    conn = connect(coord, clock, coordinator_timeout_s=60.0)
    for _ in range(3):  # outages of ~40s each, with answers between them
        coord.scripts["GetTask"] = [Failure(S.UNAVAILABLE)] * 12 + [pb.Task()]
        conn.task(0)
    assert clock.t > 60.0


def test_a_refusal_is_final(coord, clock):
    conn = connect(coord, clock)
    coord.scripts["GetTask"] = [Failure(S.PERMISSION_DENIED, "not yours")]
    with pytest.raises(CallRefused, match="PERMISSION_DENIED: not yours"):
        conn.task(0)
    assert clock.waits == []


def test_a_duplicate_id_at_join_is_refused_with_the_coordinators_words(coord, clock):
    coord.scripts["Join"] = [Failure(S.ALREADY_EXISTS, "client id 'c' is in use")]
    with pytest.raises(CallRefused, match="ALREADY_EXISTS: client id 'c' is in use"):
        connect(coord, clock)


def test_the_first_join_waits_connect_timeout_for_the_coordinator_to_come_up(coord, clock):
    coord.scripts["Join"] = [Failure(S.UNAVAILABLE)] * 1000
    with pytest.raises(CoordinatorLost, match="connect_timeout_s=30"):
        connect(coord, clock, connect_timeout_s=30.0)
    assert clock.t <= 30.0 + RETRY_MAX_S


DATA = bytes(range(256)) * 20
BLOB = Blob(DATA, sha256(DATA), tensor_bytes=len(DATA))


def test_an_upload_with_every_byte_held_sends_no_empty_stream(coord, clock):
    conn = connect(coord, clock)
    size = BLOB.size
    coord.scripts["UploadStatus"] = [pb.UploadStatusReply(acked_offset=size, total_size=size),
                                     pb.UploadStatusReply(acked_offset=size, total_size=size,
                                                          complete=True)]
    stats = conn.upload(1, BLOB, 1024)
    assert coord.uploads == [] and stats.payload_bytes == 0


def test_an_upload_resumes_from_the_acknowledged_offset(coord, clock):
    conn = connect(coord, clock)
    coord.scripts["UploadStatus"] = [pb.UploadStatusReply(),
                                     pb.UploadStatusReply(acked_offset=2048, total_size=BLOB.size)]
    coord.scripts["Upload"] = [Failure(S.UNAVAILABLE, "connection reset")]
    conn.upload(1, BLOB, 1024)
    first, resumed = coord.uploads
    assert first[0].offset == 0 and resumed[0].offset == 2048
    assert b"".join(c.data for c in resumed) == BLOB.data[2048:]
    assert resumed[0].session_id == "s1" and resumed[0].total_size == BLOB.size


def test_an_upload_carries_its_session_in_the_call_metadata(coord, clock):
    conn = connect(coord, clock)
    conn.upload(1, BLOB, 1024)
    assert coord.upload_metadata == [((SESSION_METADATA, "s1"),)]
    assert coord.uploads[0][0].session_id == "s1"


def test_an_upload_after_a_coordinator_restart_rejoins_and_starts_over(coord, clock):
    conn = connect(coord, clock)
    coord.scripts["UploadStatus"] = [Failure(S.UNAUTHENTICATED), pb.UploadStatusReply()]
    conn.upload(1, BLOB, 1024)
    assert len(coord.joins) == 2 and coord.uploads[0][0].session_id == "s2"


def test_an_upload_refused_for_good_fails_the_transfer_only(coord, clock):
    conn = connect(coord, clock)
    coord.scripts["Upload"] = [Failure(S.INVALID_ARGUMENT, "non-finite value")]
    with pytest.raises(TransferFailed, match="non-finite value"):
        conn.upload(1, BLOB, 1024)


def test_an_upload_without_progress_gives_up_after_the_no_progress_timeout(coord, clock):
    conn = connect(coord, clock, no_progress_timeout_s=30.0)
    coord.scripts["Upload"] = [Failure(S.RESOURCE_EXHAUSTED, "too large")] * 1000
    with pytest.raises(TransferFailed, match="no progress for 30s"):
        conn.upload(1, BLOB, 1024)
