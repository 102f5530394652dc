"""The built-in data, files read through Hugging Face ``datasets``, and the seeded splits:
Dirichlet, IID and by a column's values."""

from pathlib import Path

import datasets
import numpy as np
import pytest

from fedlora.common.data import (COLUMN, FederatedSplit, SplitPlan, column_partition, column_values,
                                 dirichlet_partition, iid_partition, load_file, load_trec)


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
    split = FederatedSplit.make(load_trec(), SplitPlan(4, alpha=0.5, test_fraction=0.1, seed=0))
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


def test_iid_split_covers_every_example_once_in_parts_one_apart_in_size():
    parts = iid_partition(103, 4, seed=5)
    together = np.concatenate(parts)
    assert sorted(together.tolist()) == list(range(103))
    assert max(map(len, parts)) - min(map(len, parts)) <= 1
    assert all(np.array_equal(a, b) for a, b in zip(parts, iid_partition(103, 4, seed=5)))
    assert not all(np.array_equal(a, b) for a, b in zip(parts, iid_partition(103, 4, seed=6)))


def test_column_split_keeps_each_value_on_one_client():
    users = ["ann"] * 50 + ["bob"] * 30 + ["cy"] * 15 + ["di"] * 10 + ["ed"] * 5
    parts = column_partition(users, 3, "user")
    owners = {}
    for k, p in enumerate(parts):
        for i in p:
            owners.setdefault(users[i], set()).add(k)
    assert all(len(ks) == 1 for ks in owners.values())  # no value is cut across clients
    assert sorted(len(p) for p in parts) == [30, 30, 50]  # largest first, to the emptiest part


def test_column_split_with_as_many_values_as_clients_gives_one_value_each():
    parts = column_partition(["b", "a", "c", "a", "b", "c", "c"], 3, "src")
    assert [p.tolist() for p in parts] == [[2, 5, 6], [1, 3], [0, 4]]  # c (3 rows), then a, b by value


def test_column_split_needs_a_value_per_client_and_says_so():
    with pytest.raises(ValueError, match="column 'user' has 2 distinct value.*3 clients"):
        column_partition(["a", "b", "a"], 3, "user")


def test_a_file_is_federated_by_its_column_and_a_missing_column_is_named(tmp_path):
    f = tmp_path / "d.csv"
    f.write_text("text,label,user\n" + "".join(f"q{i},{'XY'[i % 2]},u{i % 3}\n" for i in range(60)))
    split = FederatedSplit.make(load_file(f, "text", "label"),
                                SplitPlan(3, COLUMN, test_fraction=0.1, seed=1, column="user"),
                                column_values(f, "user"))
    users = column_values(f, "user")
    owned = [{users[i] for i in s} for s in split.shards]
    assert all(len(o) == 1 for o in owned) and set().union(*owned) == {"u0", "u1", "u2"}
    with pytest.raises(ValueError, match=r"no column 'site' \(data.partition_column\)"):
        column_values(f, "site")


ROWS = {"text": ["what is a dog?", "who wrote Hamlet?", "where is Paris?"], "label": ["DESC", "HUM", "LOC"]}


def test_a_parquet_file_is_read_like_a_csv(tmp_path):
    datasets.Dataset.from_dict(ROWS).to_parquet(str(tmp_path / "d.parquet"))
    (tmp_path / "d.csv").write_text("text,label\n" + "".join(f"{t},{lab}\n" for t, lab in zip(*ROWS.values())))
    parquet, csv = load_file(tmp_path / "d.parquet", "text", "label"), load_file(tmp_path / "d.csv", "text", "label")
    assert parquet == csv and parquet.texts == ROWS["text"] and parquet.label_names == ["DESC", "HUM", "LOC"]


def test_a_save_to_disk_folder_is_read_and_a_dataset_dict_gives_its_train_split(tmp_path):
    datasets.Dataset.from_dict(ROWS).save_to_disk(str(tmp_path / "one"))
    half = datasets.Dataset.from_dict({k: v[:1] for k, v in ROWS.items()})
    datasets.DatasetDict(train=datasets.Dataset.from_dict(ROWS), test=half).save_to_disk(str(tmp_path / "dict"))
    assert load_file(tmp_path / "one", "text", "label").texts == ROWS["text"]
    assert load_file(tmp_path / "dict", "text", "label").texts == ROWS["text"]


def test_a_folder_of_several_splits_without_train_is_refused_naming_them(tmp_path):
    half = datasets.Dataset.from_dict({k: v[:1] for k, v in ROWS.items()})
    datasets.DatasetDict(a=half, b=half).save_to_disk(str(tmp_path / "dict"))
    with pytest.raises(ValueError, match=r"dict: holds splits \['a', 'b'\]"):
        load_file(tmp_path / "dict", "text", "label")


def test_a_missing_column_names_the_file_the_column_and_its_field(tmp_path):
    datasets.Dataset.from_dict(ROWS).to_parquet(str(tmp_path / "d.parquet"))
    with pytest.raises(ValueError, match=r"d.parquet: no column 'category' \(label_column\); its columns are"):
        load_file(tmp_path / "d.parquet", "text", "category")


def test_an_empty_label_is_refused_naming_the_row_and_column(tmp_path):
    (tmp_path / "d.csv").write_text("text,label\na,X\nb,\n")
    with pytest.raises(ValueError, match="d.csv: row 1 has no value in column 'label'"):
        load_file(tmp_path / "d.csv", "text", "label")


@pytest.mark.parametrize("name, body, why", [
    ("d.txt", "text,label\n", "unsupported type '.txt'"),
    ("d.parquet", "not parquet", "cannot be read as parquet: "),
    ("d.jsonl", '{"text": "a", "label": "X"}\n{"text": ', "cannot be read as json: "),
    ("d.csv", "text,label\n", "no rows"),
])
def test_an_unreadable_file_is_one_line_naming_it(tmp_path, name, body, why):
    (tmp_path / name).write_text(body)
    with pytest.raises(ValueError, match=why) as e:
        load_file(tmp_path / name, "text", "label")
    assert str(e.value).startswith(f"data file {tmp_path / name}: ") and "\n" not in str(e.value)


def test_a_file_with_a_header_and_no_rows_is_refused(tmp_path):
    datasets.Dataset.from_dict({"text": [], "label": []}).to_parquet(str(tmp_path / "d.parquet"))
    with pytest.raises(ValueError, match="d.parquet: no rows"):
        load_file(tmp_path / "d.parquet", "text", "label")


def _tree(folder) -> set[str]:
    return {str(p) for p in folder.rglob("*")} if folder.exists() else set()


def test_reading_a_file_writes_nothing_beside_it_or_in_the_home_cache(tmp_path):
    """datasets' default cache (read when it is imported, so the test looks at the one in use)
    gains nothing: each read builds in a temporary folder of its own."""
    home_cache = Path(datasets.config.HF_DATASETS_CACHE)
    before = _tree(home_cache)
    (tmp_path / "d.csv").write_text("text,label\na,X\nb,Y\n")
    load_file(tmp_path / "d.csv", "text", "label")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["d.csv"]
    assert _tree(home_cache) == before
