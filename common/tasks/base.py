"""The task seam: everything that depends on what kind of model is trained.

Generic code (the trainer, the block profiler, both apps, the adapted model) knows batches
only as ``(inputs, targets)`` with one row per example, a loss only as a mean tensor, and an
evaluation only as a :class:`~fedlora.common.evaluate.Score`. Which base model to load, how
rows are read, collated and scored, and which PEFT task type the saved adapter declares is
the task's business, so a new kind of model is a new :class:`Task`, not edits across the
training and federation code.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from types import SimpleNamespace
from typing import ClassVar, Protocol

import numpy as np
import torch
from torch import nn

from fedlora.common.data import COLUMN, OWN, FederatedSplit, SplitPlan, column_values
from fedlora.common.evaluate import EvalOptions, Score
from fedlora.common.model import load_tokenizer, resolve_model_path


class Rows(Protocol):
    """What generic code does with a task's data: counts rows and takes subsets of them
    (shards, local hold-outs, sampled batches); ``label_names`` is the run's class list,
    which the coordinator announces in ``RunSpec`` (empty where the task has no classes)."""

    @property
    def label_names(self) -> list[str]: ...

    def __len__(self) -> int: ...

    def subset(self, idx: list[int] | np.ndarray) -> "Rows": ...


class Columns(Protocol):
    """Where a data file keeps its fields: the config section that names them
    (``DataConfig`` on the coordinator, ``ClientConfig`` on a client), passed whole so a task
    reads the names it needs and generic code never lists them."""

    text_column: str
    label_column: str
    prompt_column: str
    response_column: str
    messages_column: str


COLUMN_FIELDS = ("text_column", "label_column", "prompt_column", "response_column", "messages_column")


def columns_from(names: Mapping[str, str]) -> Columns:
    """Columns as a run spec carries them (the coordinator's, for the file it federates)."""
    missing = [f for f in COLUMN_FIELDS if f not in names]
    if missing:
        raise ValueError(f"the run names no {missing[0]} for its data file")
    return SimpleNamespace(**{f: names[f] for f in COLUMN_FIELDS})


Batch = tuple[dict[str, torch.Tensor], torch.Tensor]


class Task(ABC):
    """One kind of model, from loading its base to scoring it. Instances hold no state: the
    registry keeps one per name and every process looks its task up by the run's name."""

    name: ClassVar[str]
    peft_task_type: ClassVar[str]  # ``LoraConfig.task_type``: peft's wrapper and the saved adapter's type
    # the config's defaults where the run leaves them unset (``adapter.*``, ``data.max_length``)
    target_modules: ClassVar[tuple[str, ...]]
    modules_to_save: ClassVar[tuple[str, ...]]
    max_length: ClassVar[int]
    # whether rows carry a class (``RunSpec.label_names``): methods that group data by class
    # (CE-LoRA's statistics) need another grouping where they do not
    has_classes: ClassVar[bool]

    def model_source(self, model: str) -> str:
        """Where ``model`` (a name from the config; ``default`` = the task's built-in base) is
        read from, for logs and the saved adapter's record."""
        return str(resolve_model_path(model))

    def load_tokenizer(self, model: str):
        return load_tokenizer(model)

    @abstractmethod
    def load_base(self, model: str, num_labels: int, seed: int) -> nn.Module:
        """The base model. Weights the checkpoint lacks must be drawn from ``seed`` alone, so
        that the coordinator and every client build bit-identical bases. ``num_labels`` is the
        run's (``RunSpec.num_labels``; 0 where the task has no classes)."""

    @abstractmethod
    def load_file(self, path: Path, columns: Columns, label_names: Sequence[str] = ()) -> Rows:
        """A data file as rows; with ``label_names`` (the run's), rows outside them are refused."""

    @abstractmethod
    def builtin_data(self, source: str) -> Rows | None:
        """The built-in data set named ``source`` (rows with ``labels`` the split is skewed by),
        or ``None`` when ``source`` names none."""

    def federated_split(self, source: str, plan: SplitPlan, columns: Columns | None = None,
                        label_names: Sequence[str] = ()) -> FederatedSplit | None:
        """The seeded split of the run's data, which every process derives alike so the
        coordinator ships no data: the built-in set named ``source``, or the file at ``source``
        read with ``columns``; ``None`` where clients bring their own data (``plan.scheme`` own)."""
        data = self.builtin_data(source)
        if data is not None:
            if plan.scheme == COLUMN:
                raise ValueError(f"data.partition: 'column' needs a data file; the built-in "
                                 f"{source!r} has no columns")
            return FederatedSplit.make(data, plan)
        if plan.scheme == OWN or columns is None:
            return None
        path = Path(source)
        groups = column_values(path, plan.column) if plan.scheme == COLUMN else None
        return FederatedSplit.make(self.load_file(path, columns, label_names), plan, groups)

    @abstractmethod
    def batches(self, data: Rows, tokenizer, batch_size: int, max_length: int,
                order: list[int] | None = None) -> Iterator[Batch]:
        """``(inputs, targets)`` in ``order`` (default: as stored). Every tensor's first
        dimension is the row, so a batch can be split by row across torchrun ranks."""

    @abstractmethod
    def loss(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """The mean training loss per row of ``targets`` (the trainer weights it by
        ``len(targets)`` to combine batches and ranks), computed in float32."""

    @abstractmethod
    def evaluate(self, model: nn.Module, tokenizer, data: Rows, opts: EvalOptions,
                 device: torch.device | str) -> Score:
        """The task's metric and mean loss on ``data``, leaving the model's train/eval mode as
        it found it."""


def evaluated_rows(data: Rows, opts: EvalOptions) -> Rows:
    """The rows an evaluation reads: the first ``opts.max_examples`` (all when 0)."""
    if opts.max_examples and len(data) > opts.max_examples:
        return data.subset(list(range(opts.max_examples)))
    return data
