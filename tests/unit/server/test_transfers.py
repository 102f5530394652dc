"""The coordinator's transfer books: partial uploads and their status, byte counts, and a
clean slate for every round; no sockets, no processes."""

import pytest

from fedlora.common.errors import Refused, Status
from fedlora.common.wire.blob import Blob
from fedlora.common.wire.chunks import iter_chunks, sha256
from fedlora.server.transfers import Transfers

DATA = bytes(range(256)) * 10
CHUNK = 1000


def started(rnd: int = 1, data: bytes = DATA) -> tuple[Transfers, object]:
    t = Transfers()
    t.open(rnd)
    return t, t.upload("c", rnd, len(data), sha256(data))


def send(t: Transfers, part, data: bytes = DATA, upto: int | None = None) -> None:
    for off, c in iter_chunks(data, CHUNK):
        if upto is not None and off >= upto:
            break
        t.add(part, off, c, sha256(c))


def test_status_after_some_chunks_is_the_acknowledged_offset():
    t, part = started()
    send(t, part, upto=2 * CHUNK)
    s = t.status("c", 1)
    assert (s.acked_offset, s.total_size, s.complete) == (2 * CHUNK, len(DATA), False)


def test_a_second_stream_for_the_same_blob_resumes_the_partial_upload():
    t, part = started()
    send(t, part, upto=CHUNK)
    assert t.upload("c", 1, len(DATA), sha256(DATA)) is part


def test_declaring_another_blob_starts_over():
    t, part = started()
    send(t, part, upto=CHUNK)
    other = DATA[::-1]
    fresh = t.upload("c", 1, len(other), sha256(other))
    assert fresh is not part and fresh.acked == 0 and t.status("c", 1).acked_offset == 0


def test_a_complete_upload_yields_the_verified_bytes():
    t, part = started()
    send(t, part)
    assert part.complete and t.take("c", 1) == DATA


def test_an_incomplete_upload_is_not_taken():
    t, part = started()
    send(t, part, upto=len(DATA) - CHUNK)
    assert t.take("c", 1) is None


def test_a_whole_blob_is_taken_once_whichever_call_asks_first():
    t, part = started()
    send(t, part)
    assert t.take("c", 1) == DATA
    assert t.take("c", 1) is None  # a second stream, or UploadStatus: the first one finishes it
    s = t.status("c", 1)
    assert (s.acked_offset, s.complete) == (len(DATA), False)  # held, being checked


def test_a_released_blob_may_be_taken_again():
    t, part = started()
    send(t, part)
    t.take("c", 1)
    t.release("c", 1)
    assert t.take("c", 1) == DATA


def test_declaring_another_blob_after_a_take_starts_a_new_upload_to_take():
    t, part = started()
    send(t, part)
    t.take("c", 1)
    other = DATA[::-1]
    fresh = t.upload("c", 1, len(other), sha256(other))
    send(t, fresh, other)
    assert t.take("c", 1) == other


def test_a_blob_digest_mismatch_clears_the_buffer_to_resend_from_zero():
    t = Transfers()
    t.open(1)
    part = t.upload("c", 1, len(DATA), sha256(b"something else"))
    send(t, part)
    with pytest.raises(Refused) as e:
        t.take("c", 1)
    assert e.value.code == Status.DATA_LOSS
    assert part.acked == 0 and t.status("c", 1).acked_offset == 0
    send(t, part)  # resent in full: taken (and refused) again, not stuck as taken
    with pytest.raises(Refused):
        t.take("c", 1)


def test_an_accepted_upload_reports_complete_and_releases_its_buffer():
    t, part = started()
    send(t, part)
    t.accepted("c", 1, len(DATA), tensor_bytes=4096, stage_bytes=[4096, 2000])
    s = t.status("c", 1)
    assert (s.acked_offset, s.total_size, s.complete) == (len(DATA), len(DATA), True)
    assert part.released and part.held == 0  # whoever still holds the object (an open stream)


def test_no_new_upload_starts_for_a_client_already_accepted_in_the_round():
    t, part = started()
    send(t, part)
    t.accepted("c", 1, len(DATA), tensor_bytes=4096, stage_bytes=[])
    other = DATA[::-1]  # a second stream admitted before the fold, declaring another blob
    with pytest.raises(Refused) as e:
        t.upload("c", 1, len(other), sha256(other))
    assert e.value.code == Status.ALREADY_EXISTS
    assert t.take("c", 1) is None


def test_a_stream_still_holding_a_folded_upload_can_add_nothing():
    t, part = started()
    send(t, part, upto=CHUNK)
    t.drop("c", 1)
    with pytest.raises(Refused) as e:
        t.add(part, CHUNK, DATA[CHUNK:2 * CHUNK], sha256(DATA[CHUNK:2 * CHUNK]))
    assert e.value.code == Status.FAILED_PRECONDITION and part.held == 0


def test_the_blob_digest_is_computed_as_chunks_arrive_and_the_blob_is_not_copied():
    t, part = started()
    send(t, part)
    view = t.take("c", 1)
    assert isinstance(view, memoryview) and view == DATA and part.held == len(DATA)


def spooling(tmp_path, total: int = len(DATA)) -> tuple[Transfers, object]:
    t = Transfers(spool_dir=tmp_path / "spool", spool_bytes=total - 1)
    t.open(1)
    return t, t.upload("c", 1, total, sha256(DATA))


def test_an_upload_above_the_spool_threshold_is_put_together_on_disk(tmp_path):
    t, part = spooling(tmp_path)
    send(t, part, upto=2 * CHUNK)
    assert part.held == 0 and part.spool.parent == tmp_path / "spool"
    assert part.spool.stat().st_size == 2 * CHUNK
    send_rest = [(o, c) for o, c in iter_chunks(DATA, CHUNK) if o >= 2 * CHUNK]
    for off, c in send_rest:
        t.add(part, off, c, sha256(c))
    assert t.take("c", 1) == DATA


def test_an_upload_at_or_below_the_threshold_stays_in_memory(tmp_path):
    t = Transfers(spool_dir=tmp_path / "spool", spool_bytes=len(DATA))
    t.open(1)
    part = t.upload("c", 1, len(DATA), sha256(DATA))
    send(t, part)
    assert part.spool is None and part.held == len(DATA)
    assert list((tmp_path / "spool").iterdir()) == []


@pytest.mark.parametrize("end", ["accepted", "drop", "open"])
def test_a_spool_file_is_removed_at_fold_refusal_and_round_end(tmp_path, end):
    t, part = spooling(tmp_path)
    send(t, part)
    view = t.take("c", 1)
    {"accepted": lambda: t.accepted("c", 1, len(DATA), 1, []), "drop": lambda: t.drop("c", 1),
     "open": lambda: t.open(2)}[end]()
    assert list((tmp_path / "spool").iterdir()) == []
    assert view == DATA  # a blob being decoded keeps its mapping until it is let go


def test_leftover_spool_files_of_an_earlier_process_are_removed_on_start(tmp_path):
    (tmp_path / "spool").mkdir()
    (tmp_path / "spool" / "7.part").write_bytes(b"x" * 10)
    Transfers(spool_dir=tmp_path / "spool")
    assert list((tmp_path / "spool").iterdir()) == []


def test_a_spooled_digest_mismatch_starts_the_file_over(tmp_path):
    t = Transfers(spool_dir=tmp_path / "spool", spool_bytes=1)
    t.open(1)
    part = t.upload("c", 1, len(DATA), sha256(b"other"))
    send(t, part)
    with pytest.raises(Refused):
        t.take("c", 1)
    assert part.acked == 0 and part.spool.stat().st_size == 0


def test_a_final_refusal_drops_the_partial_upload():
    t, part = started()
    send(t, part, upto=CHUNK)
    t.drop("c", 1)
    assert t.status("c", 1).acked_offset == 0


def test_upload_bytes_add_up_over_calls_with_the_accepted_tensor_sizes():
    t, _ = started()
    t.received("c", 1, 1500, 1600, 0.5)
    t.received("c", 1, 1060, 1100, 0.25)
    t.accepted("c", 1, len(DATA), tensor_bytes=4096, stage_bytes=[4096, 2560])
    up, down = t.stats()
    assert down == {}
    assert (up["c"].payload_bytes, up["c"].protobuf_bytes, up["c"].seconds) == (2560, 2700, 0.75)
    assert (up["c"].tensor_bytes, up["c"].stage_bytes) == (4096, [4096, 2560])


def test_download_bytes_carry_the_blobs_tensor_and_stage_sizes():
    t = Transfers()
    t.open(1)
    blob = Blob(DATA, sha256(DATA), tensor_bytes=8192, stage_bytes=[8192, len(DATA)])
    t.sent("c", 1, blob, 1000, 1100, 0.1)
    t.sent("c", 1, blob, len(DATA) - 1000, 1700, 0.2)
    d = t.stats()[1]["c"]
    assert (d.payload_bytes, d.protobuf_bytes, d.tensor_bytes, d.stage_bytes) == (
        len(DATA), 2800, 8192, [8192, len(DATA)])


def test_stats_are_copies_the_caller_may_change():
    t, _ = started()
    t.received("c", 1, 10, 20, 1.0)
    t.stats()[0]["c"].seconds = 99.0
    assert t.stats()[0]["c"].seconds == 1.0


def test_opening_a_round_forgets_the_previous_ones_uploads_and_counts():
    t, part = started()
    send(t, part, upto=CHUNK)
    t.received("c", 1, CHUNK, CHUNK + 80, 0.1)
    t.open(1)  # a retry of the same round starts clean too
    assert t.status("c", 1).acked_offset == 0
    assert t.stats() == ({}, {})
    assert t.upload("c", 1, len(DATA), sha256(DATA)) is not part


def test_calls_for_another_round_are_ignored():
    t, part = started(rnd=2)
    send(t, part, upto=CHUNK)
    t.received("c", 1, CHUNK, CHUNK, 0.1)
    t.drop("c", 1)
    t.accepted("c", 1, len(DATA), 1, [])
    assert t.stats() == ({}, {})
    assert t.status("c", 2).acked_offset == CHUNK
    assert t.status("c", 1).acked_offset == 0
