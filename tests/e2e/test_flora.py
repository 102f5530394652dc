"""FLoRA (stacking) end to end: 3 client processes, 2 rounds; the stack grows on the wire and
ends up whole in the final adapter."""

from __future__ import annotations

import pytest
from safetensors.torch import load_file

from fedlora.common.model import lora_pairs
from procs import finish, records, start_client, start_server, tail

RANK, ALPHA = 4, 8.0


@pytest.fixture(scope="module")
def flora_run(tmp_path_factory, tiny_model):
    run_dir = tmp_path_factory.mktemp("flora") / "run"
    clients = ["client-0", "client-1", "client-2"]
    server, address = start_server(run_dir, {
        "model": str(tiny_model), "strategy": "flora", "rounds": 2, "min_clients": 3, "seed": 3,
        "clients": len(clients), "adapter": {"rank": RANK, "alpha": ALPHA},
        "training": {"max_steps": 3, "batch_size": 16, "learning_rate": 0.01}})
    procs = [start_client(run_dir, address, c) for c in clients]
    codes = finish([server, *procs], timeout=400)
    assert codes == [0, 0, 0, 0], tail(run_dir / "logs" / "coordinator.log")
    return run_dir


def test_flora_runs_two_rounds_with_three_client_processes(flora_run):
    rounds = [r for r in records(flora_run, "round") if r["round"] > 0]
    assert [r["accepted"] for r in rounds] == [3, 3]
    assert [r["strategy"]["stack_rank"] for r in rounds] == [3 * RANK, 6 * RANK]


def test_flora_download_grows_with_the_stack(flora_run):
    down = {}
    for r in records(flora_run, "client"):
        down.setdefault(r["round"], []).append(r["down"]["tensor_bytes"])
    assert max(down[2]) > max(down[1])


def test_flora_final_adapter_holds_the_whole_stack(flora_run):
    adapter = load_file(str(flora_run / "adapter" / "adapter_model.safetensors"))
    assert all(adapter[a].shape[0] == 6 * RANK for a, _ in lora_pairs(adapter).values())
