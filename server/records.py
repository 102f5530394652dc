"""The ``client`` and ``round`` records of ``metrics.jsonl``.

Field names and values are a contract: :func:`fedlora.server.runlog.summarize`,
``deploy/report.py`` and the benchmarks read them.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable
from typing import Any

from fedlora.common import netstat
from fedlora.common.evaluate import Score
from fedlora.common.wire.stats import TransferStats
from fedlora.proto.v1 import fedlora_pb2 as pb
from fedlora.server.rounds import Round
from fedlora.server.runlog import DIRECTIONS, RunLog, iface_fields


def write_initial(runlog: RunLog, score: Score) -> None:
    """Round 0: the model before any update, so every run's curve starts from the same point."""
    runlog.write("round", round=0, test_accuracy=score.accuracy, test_loss=score.loss,
                 **_extra(score), planned=0, accepted=0, seconds=0.0, up_mb=0.0, down_mb=0.0)


# what a client measures of its round (its report's metrics), under the names a strategy's
# prediction uses (Instruction.prediction); overhead_seconds is the rest of round_seconds
MEASURED = {"round_seconds": "round_seconds", "train_seconds": "train_seconds",
            "upload_seconds": "client_up_seconds", "download_seconds": "client_down_seconds"}


def measured_seconds(rep: dict[str, float]) -> dict[str, float | None]:
    """A report's round seconds by part (None where it did not say): the names of
    :data:`MEASURED`, and ``overhead_seconds``, the round less its steps and transfers."""
    out: dict[str, float | None] = {k: rep.get(m) for k, m in MEASURED.items()}
    parts = [out["round_seconds"], out["train_seconds"], out["upload_seconds"], out["download_seconds"]]
    out["overhead_seconds"] = (None if any(v is None for v in parts)
                               else max(0.0, parts[0] - parts[1] - parts[2] - parts[3]))
    return out


def write_clients(runlog: RunLog, r: Round, up: dict[str, TransferStats],
                  down: dict[str, TransferStats]) -> list[dict[str, Any]]:
    """One record per planned client, whatever became of it; returns them for the round record.
    A plan that carried a prediction (:attr:`Instruction.prediction`) is recorded with it as
    ``predicted`` and the client's own figures under the same names as ``measured``
    (:func:`measured_seconds`; None where it did not report)."""
    out = []
    for cid in sorted(r.instructions):
        status = ("accepted" if cid in r.accepted else "refused" if cid in r.refused
                  else "missing")
        rep = r.reports.get(cid, {})
        down_t = dataclasses.replace(down.get(cid, TransferStats()))
        if rep.get("client_down_seconds"):  # the receiver's clock: the sender's ends when
            down_t.seconds = rep["client_down_seconds"]  # its buffers fill, not on arrival
        moved = {"up": up.get(cid, TransferStats()).as_dict(), "down": down_t.as_dict()}
        for d in DIRECTIONS:  # the client's interface counters, judged against its own bytes
            moved[d].update(iface_fields(*netstat.assess(d, rep)))
        prediction = r.instructions[cid].prediction
        seconds = ({"predicted": {k: round(v, 4) for k, v in prediction.items()},
                    "measured": measured_seconds(rep)} if prediction else {})
        out.append(runlog.write(
            "client", round=r.number, attempt=r.attempt, client=cid, status=status,
            reason=r.refused.get(cid) or r.lost.get(cid), weight=r.accepted.get(cid),
            up=moved["up"], down=moved["down"],
            train_loss=rep.get("train_loss"), local_accuracy=rep.get("local_accuracy"),
            **seconds, metrics=rep))
    return out


def client_score(records: list[dict[str, Any]]) -> Score:
    """The round's score when the clients hold the model: the n_k-weighted mean of theirs."""
    acc, loss = _weighted(records, "test_accuracy"), _weighted(records, "test_loss")
    return Score(float("nan") if acc is None else acc, float("nan") if loss is None else loss, 0)


def round_fields(r: Round, records: list[dict[str, Any]], missing: list[str], seconds: float,
                 up: dict[str, TransferStats], down: dict[str, TransferStats],
                 strategy: dict[str, float]) -> dict[str, Any]:
    """The aggregated round's record without its test figures (:func:`score_fields`), from its
    client records and every transfer it saw: what is known when the aggregate exists. The
    coordinator's evaluation adds the rest when it lands (server/evaluation.py); a round it
    does not evaluate (``evaluate_every``) is recorded without them."""
    accepted = [rec for rec in records if rec["status"] == "accepted"]
    losses = [(rec["train_loss"], rec["weight"]) for rec in accepted
              if rec.get("train_loss") is not None]
    train_loss = (sum(l * w for l, w in losses) / sum(w for _, w in losses)) if losses else None
    return dict(
        round=r.number, attempt=r.attempt, planned=len(r.instructions),
        accepted=len(r.accepted), refused=sorted(r.refused), missing=missing,
        train_loss=train_loss,
        seconds=round(seconds, 3), personal_accuracy=_weighted(accepted, "local_accuracy"),
        evaluated_by=None,
        up_mb=sum(t.payload_bytes for t in up.values()) / 1e6,
        down_mb=sum(t.payload_bytes for t in down.values()) / 1e6,
        dp_epsilon=max((rec["metrics"].get("dp_epsilon", 0.0) for rec in records), default=None) or None,
        up_wire_mb=_sum_mb(rec["up"]["iface_bytes"] for rec in accepted),
        down_wire_mb=_sum_mb(rec["down"]["iface_bytes"] for rec in accepted
                             if rec["down"]["payload_bytes"]),
        strategy=strategy)


def score_fields(score: Score, evaluated_by: str) -> dict[str, Any]:
    """A round record's test figures: ``test_accuracy``, ``test_loss``, a task's further ones,
    and who measured them (``coordinator``, or ``clients`` when they hold the model)."""
    return {"test_accuracy": score.accuracy, "test_loss": score.loss, **_extra(score),
            "evaluated_by": evaluated_by}


def _extra(score: Score) -> dict[str, float]:
    """A task's further figures (perplexity) as ``test_<name>`` fields."""
    return {f"test_{k}": v for k, v in score.extra.items()}


def profile_dict(p: pb.DeviceProfile) -> dict[str, Any]:
    from google.protobuf.json_format import MessageToDict

    return MessageToDict(p, preserving_proto_field_name=True)


def _weighted(records: list[dict[str, Any]], key: str) -> float | None:
    """The weight-averaged (n_k) value of a reported metric, or None if nobody reported it."""
    pairs = [(rec["metrics"][key], rec["weight"]) for rec in records
             if rec.get("metrics", {}).get(key) is not None and rec.get("weight")]
    total = sum(w for _, w in pairs)
    return sum(v * w for v, w in pairs) / total if total else None


def _sum_mb(values: Iterable[int | None]) -> float | None:
    """Total MB, or None when any value is missing (the level was not measurable)."""
    vals = list(values)
    return None if not vals or any(v is None for v in vals) else sum(vals) / 1e6
