"""Uploads put together on disk (above ``spool_bytes``) fold exactly as uploads held in memory,
and global states packed into a spool file download as the in-memory ones: two runs of the same
seed, one spooling every transfer, end with the same adapter bit for bit, and no spool file
outlives its round."""

from __future__ import annotations

import pytest

from procs import finish, start_client, start_server, tail

CLIENTS = ["client-0", "client-1"]


def _run(run_dir, tiny_model, spool_bytes: int):
    server, address = start_server(run_dir, {
        "model": str(tiny_model), "rounds": 2, "min_clients": 2, "seed": 5, "clients": len(CLIENTS),
        "spool_bytes": spool_bytes, "training": {"max_steps": 2, "batch_size": 16}})
    procs = [start_client(run_dir, address, c) for c in CLIENTS]
    codes = finish([server, *procs], timeout=400)
    assert codes == [0, 0, 0], tail(run_dir / "logs" / "coordinator.log")
    return (run_dir / "adapter" / "adapter_model.safetensors").read_bytes()


@pytest.fixture(scope="module")
def runs(tmp_path_factory, tiny_model):
    base = tmp_path_factory.mktemp("spool")
    spooled = _run(base / "spooled", tiny_model, 0)
    in_memory = _run(base / "memory", tiny_model, 64 << 20)
    return base, spooled, in_memory


def test_every_upload_was_spooled_when_spool_bytes_is_zero(runs):
    base, _, _ = runs
    log = (base / "spooled" / "logs" / "coordinator.log").read_text()
    assert log.count("spooled to") == len(CLIENTS) * 2
    assert "spooled to" not in (base / "memory" / "logs" / "coordinator.log").read_text()


def test_every_download_was_served_from_a_spool_file_when_spool_bytes_is_zero(runs):
    base, _, _ = runs
    log = (base / "spooled" / "logs" / "coordinator.log").read_text()
    assert log.count("served from a spool file") == 2  # one blob a round, shared by the clients
    assert "served from a spool file" not in (base / "memory" / "logs" / "coordinator.log").read_text()


def test_spooled_uploads_fold_to_the_same_adapter_bit_for_bit(runs):
    _, spooled, in_memory = runs
    assert spooled == in_memory


def test_no_spool_file_outlives_the_run(runs):
    base, _, _ = runs
    assert list((base / "spooled" / "spool").iterdir()) == []
