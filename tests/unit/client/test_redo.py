"""A redone round reproduces the client's update bit for bit: training depends only on the run
seed, the round, the client id, the global state and the plan, not on what the process did
before (dropout masks, data order, top-k's error feedback, CE-LoRA's personal A and B)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from fedlora.common.data import SplitPlan
from fedlora import methods
from fedlora.client.app import Client
from fedlora.client.hooks import ClientContext
from fedlora.common.config import ClientConfig, ServerConfig
from fedlora.common.model import AdaptedModel
from fedlora.common.tasks import get_task
from fedlora.common.training import round_seed
from fedlora.common.wire.blob import Blob
from fedlora.common.wire.codec import Chain
from fedlora.common.wire.stats import TransferStats
from fedlora.proto.v1 import fedlora_pb2 as pb
from fedlora.server.rounds import Round, plan_round
from fedlora.server.strategy import ClientInfo, Strategy

TASK = get_task("classification")
CID = "client-1"


class FakeConnection:
    """The coordinator's side of one round: serves the round's blob, keeps what is uploaded."""

    def __init__(self) -> None:
        self.round: Round | None = None
        self.uploads: list[bytes] = []

    def download(self, rnd: int, ref: pb.BlobRef, on_bytes=None) -> tuple[bytes, TransferStats]:
        assert self.round is not None and self.round.number == rnd
        return self.round.blobs[CID].data, TransferStats()

    def upload(self, rnd: int, blob: Blob, chunk_bytes: int, on_bytes=None) -> TransferStats:
        self.uploads.append(blob.data)
        return TransferStats()

    def report(self, *args, **kwargs) -> None:
        pass


def _coordinator(strategy: str, tiny_model: Path, tmp_path: Path) -> tuple[ServerConfig, Strategy]:
    cfg = ServerConfig(model=str(tiny_model), strategy=strategy, run_dir=tmp_path / "run", insecure=True,
                       seed=7, clients=3, adapter={"rank": 4, "alpha": 8.0, "dropout": 0.1},
                       training={"max_steps": 3, "batch_size": 8},
                       codec={"upload": ["topk:0.3", "zstd:3"]})
    cls = methods.get(strategy).strategy
    model = AdaptedModel(TASK.load_base(str(tiny_model), 6, cfg.seed), cls.adapter_spec(cfg), TASK.peft_task_type)
    return cfg, cls(cfg, model)


def _client(cfg: ServerConfig, tiny_model: Path, state_dir: Path) -> tuple[Client, FakeConnection]:
    c = Client(ClientConfig(server="127.0.0.1:9", client_id=CID, insecure=True, model=str(tiny_model),
                            state_dir=state_dir, threads=1, device="cpu", probe_bytes=0))
    split = TASK.federated_split("trec", SplitPlan(3, alpha=0.5, test_fraction=0.1, seed=cfg.seed))
    c.spec = pb.RunSpec(run_id="run-test", strategy=cfg.strategy, model=str(tiny_model), task=TASK.name,
                        num_labels=6, rounds=3, seed=cfg.seed, partition=1, num_partitions=3,
                        dirichlet_alpha=0.5, test_fraction=0.1, dataset="trec", max_length=32,
                        label_names=split.dataset.label_names,
                        adapter=methods.get(cfg.strategy).strategy.adapter_spec(cfg))
    c._prepare_data()
    c.hooks = methods.get(cfg.strategy).client(ClientContext(
        CID, c.spec, c.device, c.state_dir, c.tokenizer, c.train_data, c._model_for, c.task))
    conn = FakeConnection()
    c.conn = conn
    return c, conn


def _play(c: Client, conn: FakeConnection, r: Round) -> bytes:
    conn.round = r
    c.play(r.instructions[CID].plan)
    return conn.uploads[-1]


def _disturb() -> None:
    """What another round or another process may have done to the global RNGs."""
    torch.rand(1000)
    np.random.default_rng().random(10)


@pytest.mark.parametrize("strategy", ["fedavg-lora", "ce-lora"])
def test_a_redone_round_reproduces_the_update_bit_for_bit(strategy, tiny_model, tmp_path):
    cfg, s = _coordinator(strategy, tiny_model, tmp_path)
    info = [ClientInfo(CID, 1, 100, pb.DeviceProfile(num_examples=100))]
    rounds = {rnd: plan_round(s, cfg, Chain.parse(cfg.codec.download), rnd, 0, info) for rnd in (1, 2)}
    c, conn = _client(cfg, tiny_model, tmp_path / "state")

    first = _play(c, conn, rounds[1])
    _disturb()
    assert _play(c, conn, rounds[1]) == first  # a retry of round 1 in the same process
    second = _play(c, conn, rounds[2])
    assert second != first
    _disturb()
    assert _play(c, conn, rounds[2]) == second  # round 2 again: from the state after round 1

    kept = {p.parent.name.split("-")[0] for p in (tmp_path / "state" / CID).glob("*/round-*.safetensors")}
    assert kept == ({"codec", "local"} if strategy == "ce-lora" else {"codec"})
    restarted, conn2 = _client(cfg, tiny_model, tmp_path / "state")  # a new process, same folder
    assert _play(restarted, conn2, rounds[2]) == second


def test_round_seeds_differ_by_client_and_round_and_are_stable():
    seeds = {round_seed(7, r, c) for r in (1, 2) for c in ("client-0", "client-1")}
    assert len(seeds) == 4
    assert round_seed(7, 1, "client-0") == round_seed(7, 1, "client-0") < 2**63
