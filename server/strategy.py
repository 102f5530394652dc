"""The one interface every federated method implements.

In the spirit of Flower's ``Strategy``: the round engine asks the strategy what each sampled
client should do (:meth:`Strategy.configure`), hands it each accepted update as it arrives
(:meth:`Strategy.fold`, streaming), and asks it to commit the round (:meth:`Strategy.aggregate`).
The engine validates updates against :attr:`Instruction.expected` before ``fold`` sees them,
so strategies never deal with malformed input, and knows nothing about any method.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import torch

from fedlora.common.config import ServerConfig
from fedlora.common.model import AdaptedModel
from fedlora.proto.v1 import fedlora_pb2 as pb

TensorSpec = tuple[tuple[int, ...], torch.dtype]


@dataclass(frozen=True)
class ClientInfo:
    id: str
    partition: int
    num_examples: int
    profile: pb.DeviceProfile


@dataclass
class Instruction:
    """What one client does in one round: the plan (data), the tensors it downloads, and the
    exact names/shapes/dtypes its upload must contain.

    ``prediction``: for a strategy that plans with predicted times (LEGEND), the seconds it
    expects this client's round to take, by part, named as the client measures them
    (``round_seconds``, ``train_seconds``, ``upload_seconds``, ``download_seconds``,
    ``overhead_seconds``: :data:`fedlora.server.records.MEASURED`). The engine writes it into
    the client's record beside the measured seconds; empty (the default) records nothing."""

    plan: pb.Plan
    tensors: dict[str, torch.Tensor]
    expected: dict[str, TensorSpec] = field(default_factory=dict)
    prediction: dict[str, float] = field(default_factory=dict)


def split_prefixed(tensors: dict[str, torch.Tensor],
                   prefix: str) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """(the tensors named ``prefix...``, with the prefix taken off; the others): how a
    strategy's :meth:`Strategy.restore` takes its own tensors out of its journaled state."""
    own = {n[len(prefix):]: t for n, t in tensors.items() if n.startswith(prefix)}
    return own, {n: t for n, t in tensors.items() if not n.startswith(prefix)}


class Strategy(ABC):
    name: ClassVar[str]
    # False when the global model lives on the clients (personal adapters): the round's test
    # accuracy is then the n_k-weighted mean of what the clients measure on the test split.
    server_evaluates: ClassVar[bool] = True
    # True when the planner reads clients' link rates (DeviceProfile.*_bytes_per_second): the
    # run spec then has every client probe its link at join (RunSpec.probe_link), which costs
    # seconds before its first round that no other method should pay
    needs_link_rates: ClassVar[bool] = False

    def __init__(self, cfg: ServerConfig, model: AdaptedModel):
        self.cfg = cfg
        self.model = model  # the coordinator's evaluation model; its state is the global state

    @classmethod
    @abstractmethod
    def adapter_spec(cls, cfg: ServerConfig) -> pb.AdapterSpec:
        """The adapter the evaluation model (and the final saved adapter) is built with."""

    def admit(self, client: ClientInfo) -> str | None:
        """Checks a client's (refreshed) profile; a reason refuses it from the run."""
        return None

    @abstractmethod
    def configure(self, rnd: int, clients: list[ClientInfo]) -> dict[str, Instruction]:
        """Plans for the round's sampled clients, keyed by client id."""

    @abstractmethod
    def fold(self, rnd: int, client: ClientInfo, update: dict[str, torch.Tensor],
             weight: float) -> None:
        """Folds one validated update into the round's running aggregate."""

    @abstractmethod
    def aggregate(self, rnd: int) -> dict[str, float]:
        """Commits the round into the global state; returns metrics to log."""

    @abstractmethod
    def discard(self, rnd: int) -> None:
        """Drops a round's partial aggregate (too few updates arrived)."""

    def global_state(self) -> dict[str, torch.Tensor]:
        return self.model.state()

    def moving_tensors(self) -> list[torch.Tensor]:
        """Tensors of the model outside its adapter state that :meth:`aggregate` changes (FLoRA
        merges its stack into base weights). The coordinator's evaluation copy
        (server/evaluation.py) owns these and the adapter state and shares every other tensor
        with the model, so a method that changes one it does not name here would change the
        model being scored beside the next round."""
        return []

    def state(self) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
        """Everything this strategy needs to go on after a committed round, for the run's
        journal (server/journal.py): tensors (saved as safetensors) and JSON-able values.
        Called between rounds only. The default is the model's adapter state, which is the
        whole global state of a method that keeps nothing else; a method that keeps more across
        rounds extends both this and :meth:`restore`, under names of its own (adapter names
        start with ``base_model.``)."""
        return self.model.state(), {}

    def restore(self, tensors: dict[str, torch.Tensor], meta: dict[str, Any]) -> None:
        """Puts a freshly built strategy back where :meth:`state` was taken, so that its next
        round (plans and aggregate) is the one the original would have played."""
        self.model.load_state(tensors)

    def save_adapter(self, folder: Path) -> None:
        """Writes the final global model as a standard PEFT adapter (or HF model) folder."""
        self.model.save(folder)

    def personal_state(self) -> dict[str, dict[str, torch.Tensor]]:
        """Per-client tensors the coordinator holds at the end (personalised methods)."""
        return {}

    def same_plan(self, rnd: int, clients: list[ClientInfo], tensors: dict[str, torch.Tensor],
                  expected: dict[str, TensorSpec], freeze: tuple[str, ...] = (),
                  upload: tuple[str, ...] = (".*",)) -> dict[str, Instruction]:
        """One plan for every client (methods without per-client plans): train everything but
        ``freeze``, upload ``upload``, download ``tensors`` (packed once for all)."""
        out = {}
        for c in clients:
            plan = self.base_plan(rnd)
            plan.train.append(".*")
            plan.freeze.extend(freeze)
            plan.upload.extend(upload)
            out[c.id] = Instruction(plan, tensors, expected)
        return out

    def base_plan(self, rnd: int) -> pb.Plan:
        """The parts of a plan every method shares: local training and the upload codec."""
        t = self.cfg.training
        return pb.Plan(
            round=rnd,
            adapter=self.adapter_spec(self.cfg),
            training=pb.LocalTraining(
                epochs=t.epochs, max_steps=t.max_steps, batch_size=t.batch_size,
                learning_rate=t.learning_rate, weight_decay=t.weight_decay,
                optimizer=t.optimizer, max_grad_norm=t.max_grad_norm,
                dp=pb.DifferentialPrivacy(
                    enabled=t.dp.enabled, noise_multiplier=t.dp.noise_multiplier,
                    clip_norm=t.dp.clip_norm, target_epsilon=t.dp.target_epsilon,
                    delta=t.dp.delta,
                ),
            ),
            upload_kind="delta" if self.cfg.codec.upload_delta else "weights",
            upload_codec=pb.Codec(stages=self.cfg.codec.upload),
        )
