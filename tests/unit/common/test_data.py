"""The built-in data and the seeded Dirichlet split."""

import numpy as np
import pytest

from fedlora.common.data import FederatedSplit, dirichlet_partition, load_file, load_trec


def test_trec_has_six_coarse_labels_and_no_duplicates():
    ds = load_trec()
    assert ds.label_names == ["ABBR", "DESC", "ENTY", "HUM", "LOC", "NUM"]
    assert len(ds) > 5000 and len(set(ds.texts)) == len(ds)


@pytest.mark.parametrize("alpha", [0.1, 0.5, 1.0])
def test_dirichlet_split_covers_every_example_once(alpha):
    labels = np.random.default_rng(0).integers(0, 6, size=2000)
    parts = dirichlet_partition(labels, 5, alpha, seed=3)
    together = np.concatenate(parts)
    assert len(together) == len(labels) and len(np.unique(together)) == len(labels)


def test_dirichlet_split_is_deterministic_and_seed_dependent():
    labels = np.random.default_rng(0).integers(0, 6, size=1000)
    a = dirichlet_partition(labels, 4, 0.5, seed=7)
    b = dirichlet_partition(labels, 4, 0.5, seed=7)
    c = dirichlet_partition(labels, 4, 0.5, seed=8)
    assert all(np.array_equal(x, y) for x, y in zip(a, b))
    assert not all(np.array_equal(x, y) for x, y in zip(a, c))


def test_small_alpha_skews_labels():
    labels = np.repeat(np.arange(6), 300)
    skewed = dirichlet_partition(labels, 4, 0.1, seed=1)
    even = dirichlet_partition(labels, 4, 100.0, seed=1)

    def max_share(parts):
        return np.mean([np.bincount(labels[p], minlength=6).max() / len(p) for p in parts])

    assert max_share(skewed) > max_share(even) + 0.2


def test_test_split_is_disjoint_from_every_shard():
    split = FederatedSplit.make(load_trec(), 4, 0.5, 0.1, seed=0)
    test = set(split.test_idx.tolist())
    assert all(not (set(s.tolist()) & test) for s in split.shards)
    assert len(test) + sum(len(s) for s in split.shards) == len(split.dataset)


def test_user_file_with_unknown_label_is_refused(tmp_path):
    f = tmp_path / "d.jsonl"
    f.write_text('{"text": "a", "label": "X"}\n{"text": "b", "label": "Y"}\n')
    with pytest.raises(ValueError, match="not among the run's"):
        load_file(f, "text", "label", ["X"])
    assert load_file(f, "text", "label").labels == [0, 1]


def test_user_file_missing_column_names_it(tmp_path):
    f = tmp_path / "d.csv"
    f.write_text("sentence,label\nhello,X\n")
    with pytest.raises(ValueError, match="'text'"):
        load_file(f, "text", "label")
