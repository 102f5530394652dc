"""FFA-LoRA end to end, with DP-SGD: A frozen and never sent, B averaged exactly, epsilon
accounted per round, a client whose A differs refused, the run stopped at the budget."""

from __future__ import annotations

import json

import grpc
import pytest
import torch
from safetensors.torch import load_file

from fedlora.common.wire.blob import unpack
from fedlora.proto.v1 import fedlora_pb2 as pb
from fedlora.proto.v1 import fedlora_pb2_grpc as pbg
from fedlora.methods.ffa_lora.digest import PROFILE_KEY
from procs import finish, records, start_client, start_server, tail

HONEST = ["client-0", "client-1", "client-2"]
TARGET_EPS = 8.0


@pytest.fixture(scope="module")
def ffa_run(tmp_path_factory, tiny_model):
    run_dir = tmp_path_factory.mktemp("ffa") / "run"
    server, address = start_server(run_dir, {
        "model": str(tiny_model), "strategy": "ffa-lora", "rounds": 2, "min_clients": 3, "seed": 4,
        "clients": [{"id": c} for c in HONEST] + [{"id": "mallory"}],
        "training": {"max_steps": 3, "batch_size": 16, "learning_rate": 0.05,
                     "dp": {"enabled": True, "target_epsilon": TARGET_EPS, "clip_norm": 1.0}},
        "codec": {"upload_delta": False}})
    clients = [start_client(run_dir, address, c) for c in HONEST]
    channel = grpc.insecure_channel(address)
    stub = pbg.CoordinatorStub(channel)
    reply = stub.Join(pb.JoinRequest(client_id="mallory"), timeout=60, wait_for_ready=True)
    profile = pb.DeviceProfile(num_examples=10)
    profile.extra[PROFILE_KEY] = "0" * 64
    try:
        stub.Report(pb.ReportRequest(session_id=reply.session_id, profile=profile), timeout=30)
        refusal = (grpc.StatusCode.OK, "")
    except grpc.RpcError as e:
        refusal = (e.code(), e.details())
    try:
        codes = finish([server, *clients], timeout=300)
    finally:
        for p in (server, *clients):
            if p.poll() is None:
                p.kill()
    assert codes == [0, 0, 0, 0], tail(run_dir / "logs" / "coordinator.log")
    uploads = {}
    for cid in HONEST:
        tensors, header = unpack((run_dir / "state" / cid / "last-upload.safetensors").read_bytes())
        uploads[cid] = (tensors, float(header["num_examples"]))
    return run_dir, uploads, refusal


def test_a_never_crosses_the_wire(ffa_run):
    run_dir, uploads, _ = ffa_run
    adapter = load_file(str(run_dir / "adapter" / "adapter_model.safetensors"))
    shipped = {n for n in adapter if ".lora_A." not in n}
    for tensors, _ in uploads.values():
        assert set(tensors) == shipped  # exactly B and the head, as the plan names
    down = {r["down"]["tensor_bytes"] for r in records(run_dir, "client")}
    assert down == {sum(adapter[n].numel() * 4 for n in shipped)}


def test_upload_of_lora_factors_is_half_of_fedavg_lora(ffa_run):
    run_dir, uploads, _ = ffa_run
    adapter = load_file(str(run_dir / "adapter" / "adapter_model.safetensors"))
    lora_all = sum(t.numel() for n, t in adapter.items() if ".lora_" in n)       # FedAvg-LoRA sends A and B
    lora_ffa = sum(t.numel() for n, t in uploads["client-0"][0].items() if ".lora_" in n)
    assert lora_ffa / lora_all == pytest.approx(0.5)  # square q/v layers: r*d_out of r*(d_in+d_out)


def test_aggregated_b_times_shared_a_is_the_weighted_mean_of_products(ffa_run):
    run_dir, uploads, _ = ffa_run
    adapter = load_file(str(run_dir / "adapter" / "adapter_model.safetensors"))
    total = sum(w for _, w in uploads.values())
    for b_name in [n for n in adapter if ".lora_B." in n]:
        a = adapter[b_name.replace(".lora_B.", ".lora_A.")].double()
        product = adapter[b_name].double() @ a
        direct = sum(w * (t[b_name].double() @ a) for t, w in uploads.values()) / total
        torch.testing.assert_close(product, direct, rtol=0, atol=1e-6)


def test_client_with_a_different_a_is_refused(ffa_run):
    run_dir, _, (code, details) = ffa_run
    assert code == grpc.StatusCode.FAILED_PRECONDITION and "frozen LoRA A" in details
    assert all(r["accepted"] == 3 for r in records(run_dir, "round") if r["round"] > 0)


def test_epsilon_is_reported_every_round_and_grows_to_the_target(ffa_run):
    run_dir, _, _ = ffa_run
    by_client: dict[str, list[float]] = {}
    for r in records(run_dir, "client"):
        by_client.setdefault(r["client"], []).append(r["metrics"]["dp_epsilon"])
    for cid, eps in by_client.items():
        assert len(eps) == 2 and 0 < eps[0] < eps[1] <= TARGET_EPS * 1.0001
        (path,) = (run_dir / "state" / cid / "privacy").glob("*.json")  # one run, one ledger
        ledger = json.loads(path.read_text())
        assert [h[2] for h in ledger["history"]] == [3, 3] and ledger["run_id"].startswith("run-")


def test_run_stops_at_the_privacy_budget(tmp_path, tiny_model):
    run_dir = tmp_path / "run"
    server, address = start_server(run_dir, {
        "model": str(tiny_model), "strategy": "fedavg-lora", "rounds": 20, "min_clients": 2,
        "clients": 2, "round_retries": 0,
        "training": {"max_steps": 5, "batch_size": 64,
                     "dp": {"enabled": True, "noise_multiplier": 1.0, "target_epsilon": 1.7}}})
    clients = [start_client(run_dir, address, f"client-{i}") for i in range(2)]
    codes = finish([server, *clients], timeout=300)
    assert codes[0] == 1, tail(run_dir / "logs" / "coordinator.log")
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["status"] == "failed" and "privacy budget exhausted" in summary["error"]
    assert 0 < summary["rounds_completed"] < 20
