"""Engine.submit folds one update per client and round, whatever calls hand blobs over: the
interleaving a second upload stream can produce (admitted before the first blob's fold,
delivering after it), replayed without sockets."""

import pytest
import torch

from fedlora.common.config import ServerConfig
from fedlora.common.errors import Refused, Status
from fedlora.common.evaluate import Score
from fedlora.common.wire.blob import pack
from fedlora.common.wire.codec import Chain
from fedlora.proto.v1 import fedlora_pb2 as pb
from fedlora.server.engine import Engine
from fedlora.server.rounds import Round
from fedlora.server.runlog import RunLog
from fedlora.server.strategy import Instruction

CHAIN = ["zstd:3"]


class Folds:
    """The strategy's part in submit: it records what it is asked to fold."""

    def __init__(self) -> None:
        self.weights: list[float] = []

    def fold(self, rnd, client, tensors, weight) -> None:
        self.weights.append(weight)


def engine_in_round(tmp_path) -> tuple[Engine, Folds]:
    cfg = ServerConfig(clients=[{"id": "c", "token": "t"}], min_clients=1, run_dir=tmp_path)
    folds = Folds()
    eng = Engine(cfg, folds, pb.RunSpec(), RunLog(tmp_path), lambda: Score(0.0, 0.0, 0))
    plan = pb.Plan(round=1, upload_kind="weights", upload_codec=pb.Codec(stages=CHAIN))
    inst = Instruction(plan, {"w": torch.zeros(2)}, {"w": ((2,), torch.float32)})
    eng.counts.fix("c", 10)  # the count it declared at join
    eng.transfers.open(1)
    eng.current = Round(1, 0, {"c": inst}, {}, deadline=float("inf"), started=0.0)
    return eng, folds


def blob(n: int) -> bytes:
    return pack({"w": torch.ones(2)}, {"round": 1, "client": "c", "num_examples": n},
                Chain.parse(CHAIN)).data


def test_a_second_blob_of_an_accepted_client_is_refused_and_not_folded(tmp_path):
    eng, folds = engine_in_round(tmp_path)
    eng.submit("c", 1, blob(10))
    with pytest.raises(Refused) as e:
        eng.submit("c", 1, blob(10))
    assert e.value.code == Status.ALREADY_EXISTS
    assert folds.weights == [10.0] and eng.current.accepted == {"c": 10.0}


def test_the_spool_folder_is_in_the_run_folder(tmp_path):
    eng, _ = engine_in_round(tmp_path)
    assert eng.transfers.spool_dir == tmp_path / "spool" and eng.transfers.spool_dir.is_dir()


def test_a_blob_checked_for_one_attempt_is_not_folded_into_its_retry(tmp_path, monkeypatch):
    """A retried round keeps its number: a blob decoded for attempt 0 while attempt 1 opened
    (planning other clients) must not be folded into attempt 1."""
    import fedlora.server.engine as engine_module

    eng, folds = engine_in_round(tmp_path)
    retry = Round(1, 1, {}, {}, deadline=float("inf"), started=0.0)  # plans nobody
    real = engine_module.read_blob

    def decode_while_the_retry_opens(data, inst):
        eng.current.open = False
        eng.current = retry
        return real(data, inst)

    monkeypatch.setattr(engine_module, "read_blob", decode_while_the_retry_opens)
    with pytest.raises(Refused) as e:
        eng.submit("c", 1, blob(10))
    assert e.value.code == Status.FAILED_PRECONDITION
    assert folds.weights == [] and retry.accepted == {}


def test_a_blob_of_a_client_that_declined_meanwhile_is_not_folded(tmp_path, monkeypatch):
    import fedlora.server.engine as engine_module

    eng, folds = engine_in_round(tmp_path)
    real = engine_module.read_blob

    def decline_while_decoding(data, inst):
        eng.current.refused["c"] = "declined: out of budget"
        return real(data, inst)

    monkeypatch.setattr(engine_module, "read_blob", decline_while_decoding)
    with pytest.raises(Refused) as e:
        eng.submit("c", 1, blob(10))
    assert e.value.code == Status.FAILED_PRECONDITION
    assert folds.weights == [] and eng.current.accepted == {}
