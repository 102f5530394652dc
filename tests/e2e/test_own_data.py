"""`fedlora run --data FILE` federates a file nobody split by hand: the coordinator keeps the
test split and each of the 3 client processes trains on its shard of the rest (IID, Dirichlet
over labels, or grouped by a column's values), for classification and for a causal LM. Files
are CSV, Parquet, JSONL or a folder written by ``datasets``' ``save_to_disk``."""

from __future__ import annotations

import json
import subprocess
import sys
from collections import Counter

import datasets

from fedlora.common.data import train_test_split
from procs import records

ROWS = 150
USERS = ["ana", "ben", "chen", "dev"]
TOPICS = {"LOC": "where is the {} office", "NUM": "how many {} tickets are open",
          "HUM": "who owns the {} project"}


def _csv(path):
    lines = ["text,label,user"]
    for i in range(ROWS):
        label = list(TOPICS)[i % 3]
        lines.append(f"{TOPICS[label].format(f'team{i}')},{label},{USERS[(i * 7) % 11 % 4]}")
    path.write_text("\n".join(lines) + "\n")
    return path


def _run(tmp_path, model, data, *extra):
    run_dir = tmp_path / "run"
    p = subprocess.run([sys.executable, "-m", "fedlora.deploy.cli", "run", "--model", str(model),
                        "--data", str(data), "--clients", "3", "--min-clients", "3", "--rounds", "1",
                        "--run-dir", str(run_dir), "--no-live", "--local-steps", "2",
                        "--batch-size", "8", "--seed", "3", *extra],
                       capture_output=True, text=True, timeout=600)
    assert p.returncode == 0, p.stdout + p.stderr
    return run_dir


def _weights(run_dir) -> dict[str, float]:
    """Each client's declared rows: its shard less the 10% it holds out for its local score."""
    return {r["client"]: r["metrics"]["num_examples"] for r in records(run_dir, "client")}


def _shards_logged(run_dir) -> list[int]:
    line = next(l for l in (run_dir / "logs" / "coordinator.log").read_text().splitlines()
                if "shards [" in l)
    return json.loads(line[line.index("shards [") + 7:])


def _table(tmp_path) -> datasets.Dataset:
    return datasets.load_dataset("csv", data_files=str(_csv(tmp_path / "mine.csv")), split="train")


def test_iid_gives_three_shards_of_the_training_rows_one_apart_in_size(tmp_path, tiny_model):
    parquet = tmp_path / "mine.parquet"
    _table(tmp_path).to_parquet(str(parquet))
    run_dir = _run(tmp_path, tiny_model, parquet, "--partition", "iid")
    train, _ = train_test_split(ROWS, 0.1, 3)
    shards = _shards_logged(run_dir)
    assert sum(shards) == len(train) and max(shards) - min(shards) <= 1
    assert len(_weights(run_dir)) == 3
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["status"] == "complete" and summary["rounds_completed"] == 1


def test_a_file_under_fedlora_run_is_split_by_label_skew_unless_told_otherwise(tmp_path, tiny_model):
    run_dir = _run(tmp_path, tiny_model, _csv(tmp_path / "mine.csv"), "--dirichlet-alpha", "0.3")
    config = json.loads((run_dir / "config.json").read_text())
    assert config["data"]["partition"] == "dirichlet"
    assert sum(_shards_logged(run_dir)) == len(train_test_split(ROWS, 0.1, 3)[0])


def test_a_column_makes_the_clients_each_user_on_one(tmp_path, tiny_model):
    data = _csv(tmp_path / "mine.csv")
    run_dir = _run(tmp_path, tiny_model, data, "--partition", "column", "--partition-column", "user")
    train, _ = train_test_split(ROWS, 0.1, 3)
    users = [line.split(",")[2] for line in data.read_text().splitlines()[1:]]
    per_user = Counter(users[i] for i in train)
    # 4 users over 3 clients: the largest group alone, the others filling the emptiest client
    shards = sorted(_shards_logged(run_dir))
    assert sum(shards) == len(train) and max(per_user.values()) in shards
    weights = sorted(_weights(run_dir).values())  # each trains on its shard less its hold-out
    assert len(weights) == 3 and all(0 < w < n for w, n in zip(weights, shards))


def test_a_causal_lm_file_is_federated_the_same_way(tmp_path, tiny_llama):
    data = tmp_path / "qa.jsonl"
    data.write_text("\n".join(json.dumps({"prompt": f"What is {i} plus {i}?", "response": str(2 * i)})
                              for i in range(60)) + "\n")
    run_dir = _run(tmp_path, tiny_llama, data, "--task", "causal-lm", "--set", "generate_examples=2")
    assert json.loads((run_dir / "config.json").read_text())["data"]["partition"] == "iid"
    assert sorted(_shards_logged(run_dir)) == [18, 18, 18]
    rnd = [r for r in records(run_dir, "round") if r["round"] == 1][0]
    assert rnd["accepted"] == 3 and rnd["test_loss"] > 0


def test_a_save_to_disk_folder_is_federated_and_each_client_checks_it(tmp_path, tiny_model):
    folder = tmp_path / "saved"
    _table(tmp_path).save_to_disk(str(folder))
    run_dir = _run(tmp_path, tiny_model, folder, "--partition", "iid")
    assert sum(_shards_logged(run_dir)) == len(train_test_split(ROWS, 0.1, 3)[0])
    assert len(_weights(run_dir)) == 3
