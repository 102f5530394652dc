"""The coordinator's Prometheus metrics: fed by the run log's records, an upload refused over
real gRPC is counted by the status sent, each coordinator counts in its own registry, and a
failing observer never stops the run log."""

from __future__ import annotations

import logging

import grpc
import pytest

from fedlora.common.config import ServerConfig
from fedlora.common.evaluate import Score
from fedlora.common.wire.protocol import SESSION_METADATA
from fedlora.proto.v1 import fedlora_pb2 as pb
from fedlora.proto.v1 import fedlora_pb2_grpc as pbg
from fedlora.server.engine import Engine
from fedlora.server.metrics import Metrics
from fedlora.server.rpcserver import RpcServer
from fedlora.server.runlog import LEVELS, RunLog


def value(m: Metrics, metric: str, **labels: str) -> float | None:
    return m.registry.get_sample_value(metric, labels)


def test_run_log_records_feed_the_metrics(tmp_path):
    runlog, m = RunLog(tmp_path), Metrics()
    runlog.observers.append(m.observe)
    runlog.write("round", round=0, test_accuracy=0.25, test_loss=2.0, seconds=0.0)
    for cid, n in (("c0", 100), ("c1", 10)):
        runlog.write("upload", round=1, client=cid, bytes=n)
        runlog.write("client", round=1, client=cid, status="accepted",
                     up={"tensor_bytes": 4 * n, "payload_bytes": n, "protobuf_bytes": n + 7,
                         "iface_bytes": None},  # not measurable: not counted
                     down={"tensor_bytes": 8 * n, "payload_bytes": 2 * n, "protobuf_bytes": 2 * n + 9,
                           "iface_bytes": 3 * n})
    runlog.write("round", round=1, seconds=2.5, test_accuracy=0.5, test_loss=1.5,
                 test_perplexity=4.5, train_loss=1.0)
    runlog.write("round_failed", round=2, attempt=0)
    runlog.close()

    assert value(m, "fedlora_round") == 1
    assert value(m, "fedlora_rounds_completed_total") == 1
    assert value(m, "fedlora_rounds_failed_total") == 1
    assert value(m, "fedlora_round_seconds_sum") == 2.5 and value(m, "fedlora_round_seconds_count") == 1
    assert value(m, "fedlora_uploads_total", status="accepted") == 2
    assert value(m, "fedlora_bytes_total", level="payload_bytes", direction="up", client="c0") == 100
    assert value(m, "fedlora_bytes_total", level="protobuf_bytes", direction="down", client="c1") == 29
    assert value(m, "fedlora_bytes_total", level="iface_bytes", direction="down", client="c0") == 300
    assert value(m, "fedlora_bytes_total", level="iface_bytes", direction="up", client="c0") is None
    assert {lvl for lvl in LEVELS if value(m, "fedlora_bytes_total", level=lvl, direction="down",
                                           client="c1")} == set(LEVELS)
    assert {n: value(m, "fedlora_test_metric", name=n) for n in ("accuracy", "loss", "perplexity")} \
        == {"accuracy": 0.5, "loss": 1.5, "perplexity": 4.5}


def test_a_resumed_run_starts_at_its_journaled_round(tmp_path):
    runlog, m = RunLog(tmp_path), Metrics()
    runlog.observers.append(m.observe)
    runlog.write("resume", completed=3, round=4)
    runlog.close()
    assert value(m, "fedlora_round") == 3 and value(m, "fedlora_rounds_completed_total") == 0


def test_each_coordinator_counts_in_its_own_registry(tmp_path):
    a, b = Metrics(), Metrics()  # the default registry would refuse the second set of names
    a.observe({"type": "upload"})
    assert value(a, "fedlora_uploads_total", status="accepted") == 1
    assert value(b, "fedlora_uploads_total", status="accepted") is None


def test_a_failing_observer_is_dropped_and_the_records_go_on(tmp_path, caplog):
    runlog = RunLog(tmp_path)
    seen: list[str] = []

    def broken(rec):
        raise KeyError("bug")

    runlog.observers += [broken, lambda rec: seen.append(rec["type"])]
    with caplog.at_level(logging.ERROR, "fedlora.server"):
        runlog.write("join", client="c0")
        runlog.write("round", round=0)
    runlog.close()
    assert seen == ["join", "round"] and runlog.observers[0] is not broken
    assert sum("observer" in r.message for r in caplog.records) == 1
    assert runlog.count == 2 and not runlog.error


@pytest.fixture
def coordinator(tmp_path):
    """An engine with one configured client, no round open, behind the real service on a
    127.0.0.1 port; yields a stub, the client's session and the metrics."""
    cfg = ServerConfig(clients=[{"id": "c", "token": "t"}], min_clients=1, run_dir=tmp_path)
    runlog, metrics = RunLog(tmp_path), Metrics()
    runlog.observers.append(metrics.observe)
    engine = Engine(cfg, None, pb.RunSpec(), runlog, lambda: Score(0.0, 0.0, 0))
    metrics.count_connected(engine.sessions.connected)
    server = RpcServer(engine, metrics, cfg.stream_idle_s, [])
    port = server.add_port("127.0.0.1:0", None)
    server.start()
    channel = grpc.insecure_channel(f"127.0.0.1:{port}")
    stub = pbg.CoordinatorStub(channel)
    try:
        assert value(metrics, "fedlora_clients_connected") == 0
        session = stub.Join(pb.JoinRequest(client_id="c", token="t"), timeout=10).session_id
        yield stub, session, metrics
    finally:
        channel.close()
        server.stop(None)
        runlog.close()


def upload(stub, session: str, rnd: int) -> grpc.RpcError:
    first = pb.UploadChunk(session_id=session, round=rnd, total_size=3, blob_digest="00" * 32,
                           data=b"abc", digest="00" * 32)
    with pytest.raises(grpc.RpcError) as e:
        stub.Upload(iter([first]), timeout=10, metadata=((SESSION_METADATA, session),))
    return e.value


def test_a_refused_upload_is_counted_by_the_status_sent(coordinator):
    stub, session, metrics = coordinator
    assert value(metrics, "fedlora_clients_connected") == 1
    refused = upload(stub, session, rnd=2)  # no round is open
    assert refused.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert value(metrics, "fedlora_uploads_total", status="FAILED_PRECONDITION") == 1
    stranger = upload(stub, "not-a-session", rnd=2)
    assert stranger.code() == grpc.StatusCode.UNAUTHENTICATED
    assert value(metrics, "fedlora_uploads_total", status="UNAUTHENTICATED") == 1
    assert value(metrics, "fedlora_uploads_total", status="accepted") is None
