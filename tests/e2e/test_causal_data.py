"""Causal-LM runs on users' own files: each client trains on its file (prompt/response columns
or chat-format messages), the coordinator's file is the test split."""

from __future__ import annotations

import csv
import json

from procs import finish, records, start_client, start_server, tail

QA = [("What is 2 plus 2?", "4"), ("What colour is the sky?", "blue"), ("Capital of France?", "Paris"),
      ("How many legs has a spider?", "8"), ("What do bees make?", "honey"), ("Opposite of hot?", "cold")]


def test_clients_train_on_their_own_files_and_the_coordinator_tests_on_its_file(tmp_path, tiny_llama):
    test_file = tmp_path / "test.jsonl"
    test_file.write_text("\n".join(json.dumps({"q": q, "a": a}) for q, a in QA))
    chat = tmp_path / "client-0.jsonl"  # chat format, with a system turn
    chat.write_text("\n".join(json.dumps({"messages": [
        {"role": "system", "content": "Answer in one word."}, {"role": "user", "content": q},
        {"role": "assistant", "content": a}]}) for q, a in QA * 3))
    table = tmp_path / "client-1.csv"
    with table.open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["q", "a"])
        w.writerows(QA * 2)
    run_dir = tmp_path / "run"
    server, address = start_server(run_dir, {
        "task": "causal-lm", "model": str(tiny_llama), "rounds": 1, "clients": 2, "min_clients": 2,
        "generate_examples": 6, "data": {"dataset": str(test_file), "prompt_column": "q",
                                         "response_column": "a"},
        "training": {"max_steps": 2, "batch_size": 4, "learning_rate": 0.01}})
    clients = [start_client(run_dir, address, "client-0", "", "--data", str(chat)),
               start_client(run_dir, address, "client-1", "", "--data", str(table),
                            "--set", "prompt_column=q", "--set", "response_column=a")]
    assert finish([server, *clients], timeout=300) == [0, 0, 0], tail(run_dir / "logs" / "coordinator.log")
    # each weighs its own file's rows, less the 10% it holds out for its local score
    weights = {r["client"]: r["weight"] for r in records(run_dir, "client")}
    assert weights == {"client-0": 18 - 2, "client-1": 12 - 1}
    last = [r for r in records(run_dir, "round") if r["round"] == 1][0]
    assert last["test_exact_match_examples"] == len(QA) and last["test_loss"] > 0
