"""End to end over real gRPC sockets: a client that lies about itself (reports with numbers
that are not numbers, profiles and reasons of megabytes, an example count it does not have,
an FFA-LoRA rejoin with another A) is refused with a precise status, the run's books stay
clean, and the honest client processes finish the run with a finite adapter.

One federation per module and strategy; each test states one behaviour of it.
"""

from __future__ import annotations

import time

import grpc
import pytest
import torch
from safetensors.torch import load_file

from fedlora.common.wire.blob import pack
from fedlora.common.wire.codec import Chain
from fedlora.methods.ffa_lora.digest import PROFILE_KEY
from fedlora.proto.v1 import fedlora_pb2 as pb
from mallory import TOKEN, Mallory
from procs import finish, records, start_client, start_server, tail

HONEST = ["client-0", "client-1"]
TOKENS = {"client-0": "t0", "client-1": "t1", "mallory": TOKEN}
MIB = 1024 * 1024


def status(call) -> tuple[grpc.StatusCode, str]:
    try:
        call()
        return grpc.StatusCode.OK, ""
    except grpc.RpcError as e:
        return e.code(), e.details()


def lie(m: Mallory, deadline: float) -> dict[str, tuple[grpc.StatusCode, str]]:
    """Every lie once, in round 1 (the upload first, so that nothing else has refused it);
    in round 2 an honest update, folded at the vouched count."""
    out: dict[str, tuple[grpc.StatusCode, str]] = {}
    m.join()  # declares 100 examples: its count from now on

    def join_with_another_count():
        m.session = m.stub.Join(pb.JoinRequest(client_id="mallory", token=TOKEN, profile=pb.DeviceProfile(
            num_examples=200)), timeout=30).session_id

    out["other_count_at_join"] = status(join_with_another_count)
    task = m.next_train(deadline)
    rnd = task.round

    def report(**fields):
        return lambda: m.stub.Report(pb.ReportRequest(session_id=m.session, round=rnd, **fields),
                                     timeout=30)

    good = m.download(task)
    big = {k: torch.full_like(v, 4.0) for k, v in good.items()}  # 1e308 * 4 overflows a float
    data = pack(big, {"round": rnd, "client": "mallory", "num_examples": 1e308, "upload_kind": "delta"},
                Chain.parse(["zstd:3"])).data
    out["header_1e308_examples"] = status(lambda: m.upload(rnd, data))
    out["nan_metric"] = status(report(metrics={"train_loss": 0.1, "iface_up_tx_bytes": float("nan")}))
    out["nan_decline"] = status(report(metrics={"iface_up_tx_bytes": float("nan")}, decline_reason="busy"))
    out["many_metric_keys"] = status(report(metrics={f"m{i}": 1.0 for i in range(100_000)}))
    out["long_decline_reason"] = status(report(decline_reason="r" * MIB))
    huge = pb.DeviceProfile(num_examples=100)
    huge.extra["blob"] = "x" * (3 * 10**6)
    out["huge_profile"] = status(report(profile=huge))
    task = m.next_train(deadline)
    if task.kind == pb.Task.TRAIN:  # round 2: an update as an honest client would send it
        rnd = task.round
        zero = {k: torch.zeros_like(v) for k, v in m.download(task).items()}
        out["honest_update"] = status(lambda: m.upload(rnd, m.blob(rnd, zero)))
        out["honest_report"] = status(report(metrics={"train_loss": 0.5}))
    return out


@pytest.fixture(scope="module")
def liar(tmp_path_factory, tiny_model):
    run_dir = tmp_path_factory.mktemp("liar") / "run"
    server, address = start_server(run_dir, {
        "model": str(tiny_model), "rounds": 2, "min_clients": 2, "deadline_s": 120, "seed": 1,
        "clients": [{"id": c, "token": t} for c, t in TOKENS.items()],
        "training": {"max_steps": 3, "batch_size": 8, "learning_rate": 0.01}})
    clients = [start_client(run_dir, address, c, TOKENS[c]) for c in HONEST]
    try:
        results = lie(Mallory(address), time.time() + 400)
        codes = finish([server, *clients], timeout=300)
    finally:
        for p in [server, *clients]:
            if p.poll() is None:
                p.kill()
    return run_dir, results, codes


REFUSED = {
    "nan_metric": "metrics['iface_up_tx_bytes']: nan is not a finite number",
    "nan_decline": "metrics['iface_up_tx_bytes']: nan is not a finite number",
    "many_metric_keys": "metrics: 100000 keys, at most 256",
    "long_decline_reason": f"decline_reason: {MIB} characters, at most 1024",
    "huge_profile": "profile: ",
    "other_count_at_join": "declared 100 examples earlier",
    "header_1e308_examples": "num_examples=1e+308",
}


@pytest.mark.parametrize("case", sorted(REFUSED))
def test_a_lie_is_invalid_argument_naming_the_field(liar, case):
    _, results, _ = liar
    code, details = results[case]
    assert code == grpc.StatusCode.INVALID_ARGUMENT, details
    assert REFUSED[case] in details


def test_the_honest_clients_finish_the_run_with_a_finite_adapter(liar):
    run_dir, _, codes = liar
    assert codes == [0, 0, 0], tail(run_dir / "logs" / "coordinator.log")
    adapter = load_file(str(run_dir / "adapter" / "adapter_model.safetensors"))
    assert all(bool(torch.isfinite(t).all()) for t in adapter.values())
    assert [r["round"] for r in records(run_dir, "round") if r["round"] > 0] == [1, 2]


def test_an_update_is_folded_with_the_count_declared_at_join(liar):
    run_dir, results, _ = liar
    assert results["honest_update"][0] == grpc.StatusCode.OK
    mine = {r["round"]: r for r in records(run_dir, "client") if r["client"] == "mallory"}
    assert mine[1]["status"] == "refused" and "num_examples" in mine[1]["reason"]
    assert mine[2]["status"] == "accepted" and mine[2]["weight"] == 100


def test_refused_reports_never_reach_the_run_books(liar):
    run_dir, _, _ = liar
    assert (run_dir / "metrics.jsonl").stat().st_size < 256 * 1024
    assert (run_dir / "logs" / "coordinator.log").stat().st_size < 256 * 1024
    lines = (run_dir / "metrics.jsonl").read_text().splitlines()
    assert not any("NaN" in line or "xxxx" in line or "rrrr" in line for line in lines)


@pytest.fixture(scope="module")
def ffa_rejoin(tmp_path_factory, tiny_model):
    """FFA-LoRA: mallory joins, then joins again (as a client's own rejoin does) with examples
    and a frozen-A digest that is not the coordinator's."""
    run_dir = tmp_path_factory.mktemp("ffa-rejoin") / "run"
    server, address = start_server(run_dir, {
        "model": str(tiny_model), "strategy": "ffa-lora", "rounds": 1, "min_clients": 2,
        "deadline_s": 60, "seed": 4, "clients": [{"id": c} for c in [*HONEST, "mallory"]],
        "training": {"max_steps": 2, "batch_size": 8}})
    clients = [start_client(run_dir, address, c) for c in HONEST]
    m = Mallory(address, token="")
    try:
        m.stub.Join(pb.JoinRequest(client_id="mallory"), timeout=60, wait_for_ready=True)
        profile = pb.DeviceProfile(num_examples=10)
        profile.extra[PROFILE_KEY] = "0" * 64
        rejoin = status(lambda: m.stub.Join(pb.JoinRequest(client_id="mallory", profile=profile),
                                            timeout=30))
        codes = finish([server, *clients], timeout=300)
    finally:
        for p in [server, *clients]:
            if p.poll() is None:
                p.kill()
    return run_dir, rejoin, codes


def test_an_ffa_rejoin_with_another_frozen_a_is_refused(ffa_rejoin):
    _, (code, details), _ = ffa_rejoin
    assert code == grpc.StatusCode.FAILED_PRECONDITION and "frozen LoRA A" in details


def test_a_client_refused_at_rejoin_is_never_planned(ffa_rejoin):
    run_dir, _, codes = ffa_rejoin
    assert codes == [0, 0, 0], tail(run_dir / "logs" / "coordinator.log")
    assert all("mallory" not in r["clients"] for r in records(run_dir, "round_start"))
