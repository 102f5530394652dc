"""A client run by torchrun over two processes (gloo, CPU): rank 0 talks to the coordinator,
DDP trains on both; the update equals a single-process client's on the same data."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from fedlora.common.wire.blob import unpack
from procs import finish, start_client, start_server, tail
from tiny import build_tiny_model

TORCHRUN = Path(sys.executable).parent / "torchrun"


@pytest.fixture(scope="module")
def no_dropout_model(tmp_path_factory):
    return build_tiny_model(tmp_path_factory.mktemp("nodrop") / "model", dropout=0.0)


def _run(run_dir: Path, model: Path, torchrun: bool) -> dict[str, torch.Tensor]:
    server, address = start_server(run_dir, {
        "model": str(model), "rounds": 1, "clients": 1, "min_clients": 1, "seed": 3,
        "training": {"max_steps": 4, "batch_size": 8, "learning_rate": 0.01},
        "codec": {"upload": [], "download": [], "upload_delta": False}})
    if torchrun:
        log = (run_dir / "logs" / "client-0.log").open("ab")
        client = subprocess.Popen(
            [str(TORCHRUN), "--standalone", "--nproc-per-node", "2", "-m", "fedlora.client",
             "--server", address, "--id", "client-0", "--insecure", "--threads", "1",
             "--state-dir", str(run_dir / "state")],
            stdout=log, stderr=subprocess.STDOUT, env=dict(os.environ, PYTHONUNBUFFERED="1"))
        log.close()
    else:
        client = start_client(run_dir, address, "client-0")
    codes = finish([server, client], timeout=300)
    assert codes == [0, 0], tail(run_dir / "logs" / "coordinator.log") + tail(run_dir / "logs" / "client-0.log")
    return unpack((run_dir / "state" / "client-0" / "last-upload.safetensors").read_bytes())[0]


@pytest.mark.skipif(not TORCHRUN.exists(), reason="torchrun not installed beside this python")
def test_two_process_ddp_client_equals_a_single_process_client(tmp_path, no_dropout_model):
    single = _run(tmp_path / "single", no_dropout_model, torchrun=False)
    ddp = _run(tmp_path / "ddp", no_dropout_model, torchrun=True)
    assert set(single) == set(ddp)
    assert all(float(t.abs().sum()) > 0 for n, t in single.items() if ".lora_B." in n)  # B left zero: trained
    for name, t in single.items():
        torch.testing.assert_close(ddp[name], t, rtol=1e-4, atol=1e-5)
    log = (tmp_path / "ddp" / "logs" / "client-0.log").read_text()
    assert "rank 1 of 2: following rank 0" in log
