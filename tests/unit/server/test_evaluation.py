"""The coordinator's evaluation off the critical path: an in-process engine (a stand-in
strategy, one client played by the test through the engine's own calls, no sockets) whose
evaluations block until the test lets them end; and the evaluation copy, on a real model."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest
import torch

from fedlora.common.config import ConfigError, ServerConfig, load_config
from fedlora.common.evaluate import Score
from fedlora.common.model import AdaptedModel, lora_pairs
from fedlora.common.tasks import get_task
from fedlora.common.wire.blob import pack
from fedlora.common.wire.codec import Chain
from fedlora.methods.flora.merge import base_weights
from fedlora.methods.flora.strategy import FLoRA
from fedlora.proto.v1 import fedlora_pb2 as pb
from fedlora.server.engine import Engine
from fedlora.server.evaluation import EvalCopy
from fedlora.server.metrics import Metrics
from fedlora.server.runlog import RunLog, read_records, summarize
from fedlora.server.strategy import ClientInfo, Instruction, Strategy

CHAIN = ["zstd:3"]
WAIT_S = 60.0  # a bound on waits that end at once when the code is right


class Mean(Strategy):
    """A stand-in method: the global state is one tensor, the mean of the updates."""

    name = "mean"

    @classmethod
    def adapter_spec(cls, cfg):
        return pb.AdapterSpec(kind="none")

    def __init__(self, cfg):
        self.cfg, self.w, self._ups = cfg, torch.zeros(2), []

    def configure(self, rnd, clients):
        plan = pb.Plan(round=rnd, upload_kind="weights", upload_codec=pb.Codec(stages=CHAIN))
        return {c.id: Instruction(plan, {"w": self.w.clone()}, {"w": ((2,), torch.float32)})
                for c in clients}

    def fold(self, rnd, client, update, weight):
        self._ups.append(update["w"].clone())

    def aggregate(self, rnd):
        self.w, self._ups = torch.stack(self._ups).mean(0), []
        return {}

    def discard(self, rnd):
        self._ups = []


class Gated:
    """``evaluate_fn``: each snapshot's score (the global tensor's first value) is given only
    once the test opens that evaluation's gate (snapshot 0 is round 0's)."""

    def __init__(self, strategy: Mean, fail_at: int | None = None):
        self.strategy, self.fail_at = strategy, fail_at
        self.gates = [threading.Event() for _ in range(10)]
        self.taken = 0

    def __call__(self):
        k, value = self.taken, float(self.strategy.w[0])
        self.taken += 1

        def score() -> Score:
            assert self.gates[k].wait(WAIT_S), f"evaluation {k} was never let through"
            if k == self.fail_at:
                raise RuntimeError("the test split is gone")
            return Score(value, 1.0 - value, 10)

        return score


class Run:
    """An engine running on a thread, one client ``c`` joined through its own calls."""

    def __init__(self, tmp_path: Path, fail_at: int | None = None, **cfg):
        self.cfg = ServerConfig(clients=[{"id": "c", "token": "t"}], min_clients=1,
                                run_dir=tmp_path, round_retries=0, **cfg)
        self.strategy = Mean(self.cfg)
        self.evals = Gated(self.strategy, fail_at)
        self.log = RunLog(tmp_path)
        self.engine = Engine(self.cfg, self.strategy, pb.RunSpec(), self.log, self.evals)
        self.session = self.engine.sessions.join("c", "t", pb.DeviceProfile(num_examples=10)).session_id
        self.code: int | None = None
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        self.code = self.engine.run()

    def next_task(self) -> pb.Task:
        """The client's long poll, until it is told something other than WAIT."""
        for _ in range(int(WAIT_S / 0.05)):
            t = self.engine.task(self.session)
            if t is not None:
                return t
            time.sleep(0.05)
        raise AssertionError("no task within the wait")

    def train(self, task: pb.Task) -> None:
        """The client's update (the round number as both values) and its report."""
        rnd = task.round
        blob = pack({"w": torch.full((2,), float(rnd))}, {"round": rnd, "client": "c",
                                                          "num_examples": 10}, Chain.parse(CHAIN))
        self.engine.submit("c", rnd, blob.data)
        self.engine.report(self.session, rnd, {}, None)

    def records(self, kind: str | None = None) -> list[dict]:
        recs = read_records(self.log.metrics_path)
        return [r for r in recs if kind is None or r["type"] == kind]

    def finish(self) -> int:
        for g in self.evals.gates:
            g.set()
        self.thread.join(WAIT_S)
        assert not self.thread.is_alive()
        assert self.code is not None
        return self.code


def test_the_next_round_is_planned_while_the_last_aggregate_is_still_being_evaluated(tmp_path):
    run = Run(tmp_path, rounds=2)
    t1 = run.next_task()
    assert t1.kind == pb.Task.TRAIN and t1.round == 1  # round 0's evaluation has not ended
    assert run.records("round") == []
    run.evals.gates[0].set()
    run.train(t1)
    t2 = run.next_task()
    assert t2.kind == pb.Task.TRAIN and t2.round == 2  # round 1's evaluation has not ended
    assert [r["round"] for r in run.records("round")] == [0]
    run.evals.gates[1].set()
    run.train(t2)
    assert run.next_task().kind == pb.Task.DONE
    assert run.finish() == 0
    recs = run.records()
    order = [(r["type"], r["round"]) for r in recs if r["type"] in ("round_start", "round")]
    assert order.index(("round_start", 2)) < order.index(("round", 1))
    rounds = run.records("round")
    assert [r["round"] for r in rounds] == [0, 1, 2]
    # each round's record carries the score of its own aggregate (the snapshot's first value)
    assert [r["test_accuracy"] for r in rounds] == [0.0, 1.0, 2.0]
    assert all(r["evaluated_by"] == "coordinator" for r in rounds[1:])
    # a round's client records come after the previous round's record
    first_client_2 = next(i for i, r in enumerate(recs) if r["type"] == "client" and r["round"] == 2)
    assert first_client_2 > next(i for i, r in enumerate(recs) if r["type"] == "round" and r["round"] == 1)


def _play(run: Run, rounds: int) -> None:
    for rnd in range(1, rounds + 1):
        t = run.next_task()
        assert (t.kind, t.round) == (pb.Task.TRAIN, rnd)
        run.train(t)
    run.evals.gates[0].set()


def test_evaluate_every_scores_every_kth_round_and_the_last(tmp_path):
    run = Run(tmp_path, rounds=3, evaluate_every=2)
    for g in run.evals.gates:
        g.set()
    _play(run, 3)
    assert run.finish() == 0
    rounds = run.records("round")
    assert [r["round"] for r in rounds] == [0, 1, 2, 3]
    scored = [r["round"] for r in rounds if "test_accuracy" in r]
    assert scored == [0, 2, 3]
    assert rounds[1]["evaluated_by"] is None and "test_loss" not in rounds[1]
    assert run.evals.taken == 3  # a round not evaluated takes no snapshot
    summary = summarize(run.records())
    assert summary["final_accuracy"] == 3.0 and summary["best_accuracy"] == 3.0
    assert summary["accuracy_by_round"] == [None, 2.0, 3.0]
    metrics = Metrics()
    for r in rounds:
        metrics.observe(r)  # a record without test figures is a round like the others
    assert metrics.registry.get_sample_value("fedlora_round") == 3


def test_the_run_ends_only_after_the_last_evaluation_has_landed(tmp_path):
    run = Run(tmp_path, rounds=1)
    run.evals.gates[0].set()
    t = run.next_task()
    run.train(t)
    assert run.next_task().kind == pb.Task.DONE  # the clients are released at once
    run.thread.join(0.5)
    assert run.thread.is_alive() and [r["round"] for r in run.records("round")] == [0]
    assert run.finish() == 0
    assert [r["round"] for r in run.records("round")] == [0, 1]


def test_a_failed_evaluation_fails_the_run_with_its_reason(tmp_path):
    run = Run(tmp_path, rounds=2, fail_at=1)
    for g in run.evals.gates:
        g.set()
    t = run.next_task()
    run.train(t)
    assert run.finish() == 1
    assert "evaluation of round 1 failed: the test split is gone" in run.engine.error
    assert [r["round"] for r in run.records("round")] == [0]


def test_a_resumed_run_writes_the_pending_round_record_first(tmp_path):
    cfg = ServerConfig(clients=[{"id": "c", "token": "t"}], min_clients=1, run_dir=tmp_path, rounds=2)
    strategy = Mean(cfg)
    strategy.w = torch.full((2,), 0.5)
    pending = {"round": 2, "attempt": 0, "planned": 1, "accepted": 1, "seconds": 1.5,
               "up_mb": 0.0, "down_mb": 0.0, "evaluated_by": None}
    log = RunLog(tmp_path)
    engine = Engine(cfg, strategy, pb.RunSpec(), log, lambda: lambda: Score(0.5, 0.25, 10),
                    completed=2, pending=pending)
    assert engine.run() == 0
    (rec,) = [r for r in read_records(log.metrics_path) if r["type"] == "round"]
    assert rec["round"] == 2 and rec["test_accuracy"] == 0.5 and rec["evaluated_by"] == "coordinator"


def test_evaluate_every_must_be_at_least_one(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("evaluate_every: 0\n")
    with pytest.raises(ConfigError, match="evaluate_every"):
        load_config(ServerConfig, path, {})


# ---------------------------------------------------------------------- the evaluation copy
TASK = get_task("classification")


def test_the_copy_keeps_the_snapshot_while_flora_merges_the_next_round(tiny_model):
    cfg = ServerConfig(model=str(tiny_model), strategy="flora", adapter={"rank": 4, "alpha": 8.0})
    s = FLoRA(cfg, AdaptedModel(TASK.load_base(str(tiny_model), 6, cfg.seed), FLoRA.adapter_spec(cfg),
                                TASK.peft_task_type))
    s.model.model.eval()
    ids = torch.tensor([[2, 10, 20, 30, 3]])

    def logits(am: AdaptedModel) -> torch.Tensor:
        with torch.no_grad():
            return am.model(input_ids=ids).logits

    def play(rnd: int) -> None:
        clients = [ClientInfo("a", 0, 10, pb.DeviceProfile())]
        s.configure(rnd, clients)
        g = torch.Generator().manual_seed(rnd)
        s.fold(rnd, clients[0], {n: torch.randn(sh, generator=g) * 0.1
                                 for n, (sh, _) in s.model.shapes().items()}, 10.0)
        s.aggregate(rnd)

    copy = EvalCopy(s.model, s.moving_tensors)
    play(1)
    after_1 = logits(s.model)
    snap = copy.take()
    play(2)  # merges into base weights and rewrites the adapter of the strategy's model
    assert not torch.equal(logits(s.model), after_1)
    assert torch.equal(logits(snap), after_1)
    assert copy.take() is snap and torch.equal(logits(snap), logits(s.model))
    # what the copy costs: the adapter and the merged base weights; the rest is shared
    merged = {id(w) for w in base_weights(s.model).values()}
    shared = [(n, p) for n, p in s.model.model.named_parameters() if "embeddings" in n]
    copied = dict(snap.model.named_parameters())
    assert shared and all(copied[n] is p for n, p in shared)
    assert all(copied[n] is not p for n, p in s.model.model.named_parameters()
               if id(p) in merged or n in dict(s.model.model.named_parameters()) and ".lora_" in n)
    assert lora_pairs(snap.names())
