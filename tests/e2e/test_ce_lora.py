"""CE-LoRA: tri-matrix adapter, only C on the wire, personalised aggregation."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file

from fedlora.common.wire.blob import unpack
from fedlora.methods.ce_lora.stats import STATS_COUNT, STATS_MEAN
from procs import finish, records, start_client, start_server, tail

CLIENTS = ["client-0", "client-1", "client-2"]
RANK = 4


@pytest.fixture(scope="module")
def ce_run(tmp_path_factory, tiny_model):
    run_dir = tmp_path_factory.mktemp("ce") / "run"
    server, address = start_server(run_dir, {
        "model": str(tiny_model), "strategy": "ce-lora", "rounds": 2, "min_clients": 3, "seed": 5,
        "clients": len(CLIENTS), "adapter": {"rank": RANK, "alpha": 8},
        "training": {"max_steps": 4, "batch_size": 16, "learning_rate": 0.01},
        "ce_lora": {"param_similarity": "update", "tau": 0.05}})
    clients = [start_client(run_dir, address, c) for c in CLIENTS]
    codes = finish([server, *clients], timeout=300)
    assert codes == [0, 0, 0, 0], tail(run_dir / "logs" / "coordinator.log")
    uploads = {c: unpack((run_dir / "state" / c / "last-upload.safetensors").read_bytes())[0] for c in CLIENTS}
    return run_dir, uploads


def test_only_c_and_the_data_statistics_cross_the_wire(ce_run):
    run_dir, uploads = ce_run
    for tensors in uploads.values():
        cs = {n for n in tensors if n.endswith(".lora_C")}
        assert set(tensors) == cs | {STATS_MEAN, STATS_COUNT}
        assert all(tensors[n].shape == (RANK, RANK) for n in cs)
        assert len(cs) == 4  # query and value of two layers


def test_upload_is_r_squared_per_layer(ce_run):
    run_dir, uploads = ce_run
    last = [r for r in records(run_dir, "round") if r["round"] == 2][0]
    assert last["strategy"]["c_floats_per_client"] == 4 * RANK * RANK
    stats_bytes = sum(uploads["client-0"][n].numel() * 4 for n in (STATS_MEAN, STATS_COUNT))
    for rec in records(run_dir, "client"):
        assert rec["up"]["tensor_bytes"] == 4 * RANK * RANK * 4 + stats_bytes
        assert rec["down"]["tensor_bytes"] == 4 * RANK * RANK * 4  # the client's own C only


def test_each_client_receives_its_weighted_sum_of_cs(ce_run):
    run_dir, uploads = ce_run
    weights = [r for r in records(run_dir, "round") if r["round"] == 2][0]["strategy"]["weights"]
    for k in CLIENTS:
        assert sum(weights[k].values()) == pytest.approx(1.0)
        personal = load_file(str(run_dir / "personal" / f"{k}.safetensors"))
        for name, value in personal.items():
            direct = sum(weights[k][j] * uploads[j][name].double() for j in CLIENTS)
            torch.testing.assert_close(value.double(), direct, rtol=0, atol=1e-6)
    assert not all(torch.equal(load_file(str(run_dir / "personal" / f"{a}.safetensors"))[n],
                               load_file(str(run_dir / "personal" / f"{b}.safetensors"))[n])
                   for a, b in [("client-0", "client-1")] for n in uploads["client-0"] if n.endswith("lora_C"))


def test_a_and_b_stay_on_the_client_and_persist(ce_run):
    run_dir, _ = ce_run
    # kept by round (client/roundstate.py): the newest is the state after the last round
    local = {c: load_file(str(sorted((run_dir / "state" / c / "local").glob("round-*.safetensors"))[-1]))
             for c in CLIENTS}
    for tensors in local.values():
        assert any(".lora_A." in n for n in tensors) and any(".lora_B." in n for n in tensors)
        assert any(".classifier." in n for n in tensors)
    name = next(n for n in local["client-0"] if ".lora_B." in n)
    assert not torch.equal(local["client-0"][name], local["client-1"][name])  # personal, trained apart


def test_rounds_report_personalised_beside_global_accuracy(ce_run):
    run_dir, _ = ce_run
    for r in records(run_dir, "round"):
        if r["round"] > 0:
            assert r["evaluated_by"] == "clients"
            assert 0 <= r["test_accuracy"] <= 1 and 0 <= r["personal_accuracy"] <= 1


def test_a_client_model_saves_as_a_standard_peft_adapter(ce_run, tiny_model):
    from peft import PeftModel
    from transformers import AutoModelForSequenceClassification

    run_dir, _ = ce_run
    folder = run_dir / "state" / "client-0" / "adapter"
    saved = load_file(str(folder / "adapter_model.safetensors"))
    assert not any("lora_C" in n for n in saved)  # C folded into A
    base = AutoModelForSequenceClassification.from_pretrained(str(tiny_model), num_labels=6)
    PeftModel.from_pretrained(base, str(folder))
    assert json.loads((folder / "adapter_config.json").read_text())["r"] == RANK
