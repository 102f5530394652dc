"""Transfers that survive broken connections: each client reaches the coordinator through its
own proxy (tests/proxy.py), which cuts every connection once, mid-upload, mid-download, or right
after the last byte of an upload (the stream never closed). Every update is accepted, and the
bytes that crossed stay one blob's worth: transfers resume from where they broke."""

from __future__ import annotations

import pytest

from procs import finish, recorded, records, start_client, start_server, tail
from proxy import CutProxy

CHUNK = 1024
CLIENTS = ["cut-up", "cut-down", "cut-close"]


@pytest.fixture(scope="module")
def cut_run(tmp_path_factory, tiny_model):
    run_dir = tmp_path_factory.mktemp("cuts") / "run"
    server, address = start_server(run_dir, {
        "model": str(tiny_model), "rounds": 2, "min_clients": 3, "deadline_s": 600, "seed": 5,
        "clients": [{"id": c} for c in CLIENTS], "chunk_bytes": CHUNK,
        "adapter": {"rank": 16}, "training": {"max_steps": 2, "batch_size": 8}})
    proxies = {c: CutProxy(address) for c in CLIENTS}
    proxies["cut-up"].mid_stream("up")
    proxies["cut-down"].mid_stream("down")
    # the coordinator's side of cut-close's connection stays open until round 1 wrote that
    # client's record: the round settles while the stream that brought the last byte never
    # ended there, and its bytes count all the same
    proxies["cut-close"].before_close(
        lambda: bool(recorded(run_dir, "upload", client="cut-close")),
        released=lambda: bool(recorded(run_dir, "client", round=1, client="cut-close")))
    clients = [start_client(run_dir, proxies[c].address, c, "", "--set", "probe_bytes=0")
               for c in CLIENTS]
    try:
        codes = finish([server, *clients], timeout=420)
    finally:
        for p in [server, *clients]:
            if p.poll() is None:
                p.kill()
        for px in proxies.values():
            px.close()
    assert codes == [0, 0, 0, 0], "\n".join(tail(run_dir / "logs" / f"{n}.log")
                                            for n in ["coordinator", *CLIENTS])
    return run_dir, proxies


def round1(run_dir, client: str) -> dict:
    (rec,) = [r for r in records(run_dir, "client") if r["round"] == 1 and r["client"] == client]
    return rec


def upload_bytes(run_dir, client: str) -> int:
    (rec,) = [r for r in records(run_dir, "upload") if r["round"] == 1 and r["client"] == client]
    return rec["bytes"]


def test_each_proxy_cut_its_connections_once_where_it_was_told(cut_run):
    _, proxies = cut_run
    assert [(c["kind"], c["direction"]) for c in proxies["cut-up"].cuts] == [("mid_stream", "up")]
    assert [(c["kind"], c["direction"]) for c in proxies["cut-down"].cuts] == [("mid_stream", "down")]
    assert [(c["kind"], c["direction"]) for c in proxies["cut-close"].cuts] == [("before_close", "up")]


def test_every_update_is_accepted_in_every_round(cut_run):
    run_dir, _ = cut_run
    rounds = [r for r in records(run_dir, "round") if r["round"] > 0]
    assert [(r["round"], r["accepted"]) for r in rounds] == [(1, 3), (2, 3)]
    assert not records(run_dir, "refused") and not records(run_dir, "round_failed")


def test_an_upload_cut_midway_resends_only_from_the_acknowledged_offset(cut_run):
    run_dir, _ = cut_run
    rec, size = round1(run_dir, "cut-up"), upload_bytes(run_dir, "cut-up")
    assert size > 4 * CHUNK  # the cut fell inside the transfer, not at its end
    assert rec["status"] == "accepted"
    assert size <= rec["up"]["payload_bytes"] <= size + CHUNK  # what arrived: ~1.0x the blob
    assert "upload interrupted" in (run_dir / "logs" / "cut-up.log").read_text()


def test_a_download_cut_midway_resumes_from_the_bytes_held(cut_run):
    run_dir, _ = cut_run
    blob = round1(run_dir, "cut-up")["down"]["payload_bytes"]  # the same blob, never cut
    rec = round1(run_dir, "cut-down")
    assert blob > 4 * CHUNK
    assert rec["metrics"]["client_down_payload_bytes"] == blob  # received: exactly 1.0x
    assert "download interrupted" in (run_dir / "logs" / "cut-down.log").read_text()


def test_an_upload_whose_stream_broke_after_its_last_byte_is_accepted_as_sent(cut_run):
    run_dir, _ = cut_run
    rec, size = round1(run_dir, "cut-close"), upload_bytes(run_dir, "cut-close")
    assert rec["status"] == "accepted" and rec["up"]["payload_bytes"] == size  # nothing resent
    assert rec["metrics"]["client_up_payload_bytes"] == size
    log = (run_dir / "logs" / "cut-close.log").read_text()
    assert "upload interrupted" in log and "empty upload stream" not in log
