"""A client that joins again sends its whole profile: a coordinator that restarted (or gave up
on it) plans it from what the rejoin says, so a LEGEND client must not come back with a bare
profile, which its planner would read as a device whose compute and transfers cost nothing.

The real client loop (``Client.run``: join, LEGEND's block timing, the link probe, the
round-0 report) against a scripted coordinator stub, no sockets; and a round's refreshed
profile through the connection."""

from __future__ import annotations

import grpc

from fedlora import methods
from fedlora.client.app import Client
from fedlora.client.transport import Connection
from fedlora.common.config import ClientConfig, ServerConfig
from fedlora.common.data import SplitPlan
from fedlora.common.tasks import get_task
from fedlora.common.wire.stats import TransferStats
from fedlora.methods.legend.client import LegendClient
from fedlora.proto.v1 import fedlora_pb2 as pb

from unit.client.test_transport import Clock, Coordinator, Failure  # tests/ is on sys.path (conftest)

S = grpc.StatusCode
TASK = get_task("classification")


class Stub(Coordinator):
    """The scripted coordinator, with reports and the link probe."""

    def __init__(self, spec: pb.RunSpec) -> None:
        super().__init__()
        self.spec = spec
        self.reports: list[pb.ReportRequest] = []

    def Join(self, request, timeout=None, wait_for_ready=None):
        self.joins.append(request)
        self._answer("Join", request)
        self.sessions += 1
        return pb.JoinReply(session_id=f"s{self.sessions}", spec=self.spec)

    def Report(self, request, timeout=None):
        self._answer("Report", request)
        self.reports.append(request)
        return pb.ReportReply()

    def ProbeUpload(self, chunks, timeout=None, metadata=()):
        got = sum(len(c.data) for c in chunks)
        self._answer("ProbeUpload", got)
        return pb.ProbeReply(received=got)

    def ProbeDownload(self, request, timeout=None):
        self._answer("ProbeDownload", request)
        return iter([pb.Chunk(offset=0, data=b"\0" * request.size)])


def legend_spec(tiny_model) -> pb.RunSpec:
    cfg = ServerConfig(model=str(tiny_model), strategy="legend", adapter={"rank": 4, "alpha": 8.0})
    split = TASK.federated_split("trec", SplitPlan(3, alpha=0.5, test_fraction=0.1, seed=cfg.seed))
    return pb.RunSpec(run_id="run-test", strategy="legend", model=str(tiny_model), task=TASK.name,
                      num_labels=6, rounds=3, seed=cfg.seed, partition=1, num_partitions=3,
                      dirichlet_alpha=0.5, test_fraction=0.1, dataset="trec", max_length=32,
                      label_names=split.dataset.label_names, probe_link=True, chunk_bytes=64 << 10,
                      adapter=methods.get("legend").strategy.adapter_spec(cfg))


def test_a_legend_client_rejoins_with_its_block_times_and_link_rates(tiny_model, tmp_path):
    stub = Stub(legend_spec(tiny_model))
    clock = Clock()
    c = Client(ClientConfig(server="127.0.0.1:9", client_id="client-1", insecure=True, model=str(tiny_model),
                            state_dir=tmp_path, threads=1, device="cpu", probe_bytes=128 << 10))
    c.conn.close()
    c.conn = Connection("127.0.0.1:9", stub=stub, clock=clock, sleep=clock.sleep)
    # the coordinator forgets the session twice: during the link probe (before the client has
    # said how many examples it holds) and while it waits for round 1
    stub.scripts["ProbeUpload"] = [Failure(S.UNAUTHENTICATED, "unknown or expired session")]
    stub.scripts["GetTask"] = [Failure(S.UNAUTHENTICATED, "unknown or expired session"),
                               pb.Task(kind=pb.Task.DONE)]
    assert c.run() == 0
    first, during_probe, waiting = stub.joins
    # before the round-0 report the profile declares no examples: the coordinator does not plan
    # the client on it (server/engine.py, _admit_profile; Sessions.ready)
    assert first.profile.num_examples == 0 and during_probe.profile.num_examples == 0
    # the round-0 report, then a rejoin: the whole profile again
    (report,) = stub.reports
    full = report.profile
    assert full.num_examples == len(c.train_data) > 0
    assert any(k.startswith("bwd.") for k in full.layer_seconds) and full.layer_seconds["step"] > 0
    assert full.upload_bytes_per_second > 0 and full.download_bytes_per_second > 0
    assert waiting.profile == full


def test_a_rejoin_after_a_round_sends_the_refreshed_profile():
    """After a round the client holds LEGEND's refreshed profile (fitted block times, the
    round's own link rates, its overhead); a rejoin sends exactly that one."""
    stub = Stub(pb.RunSpec())
    clock = Clock()
    conn = Connection("127.0.0.1:9", stub=stub, clock=clock, sleep=clock.sleep)
    conn.join("c", "t", pb.DeviceProfile())
    joined = pb.DeviceProfile(num_examples=64, upload_bytes_per_second=1e6, download_bytes_per_second=2e6)
    for i in range(2):
        joined.layer_seconds[f"fwd.{i}"], joined.layer_seconds[f"bwd.{i}"] = 0.01, 0.02
    joined.layer_seconds.update({"fixed": 0.01, "step": 0.07, "batch": 8.0})
    conn.report(0, {"num_examples": 64.0}, joined)
    hooks = LegendClient(ctx=None)
    hooks._profile = joined
    plan = pb.Plan(round=1)
    plan.options["legend_depth"] = "1"
    metrics = {"steps": 4.0, "examples_seen": 32.0, "train_seconds": 0.4, "round_seconds": 8.0}
    refreshed = hooks.round_profile(plan, metrics, TransferStats(payload_bytes=1 << 20, seconds=2.0),
                                    TransferStats(payload_bytes=1 << 20, seconds=4.0))
    conn.report(1, metrics, refreshed)
    conn.report(2, {"dp_epsilon": 1.0}, decline="budget")  # a report without a profile keeps it
    stub.scripts["GetTask"] = [Failure(S.UNAUTHENTICATED, "unknown or expired session"),
                               pb.Task(kind=pb.Task.DONE)]
    assert conn.task(2).kind == pb.Task.DONE
    again = stub.joins[-1].profile
    assert again == refreshed and again.num_examples == 64
    assert again.upload_bytes_per_second == (1 << 20) / 4.0 and again.layer_seconds["fwd.0"] > 0
    assert again.layer_seconds["round_overhead"] > 0
