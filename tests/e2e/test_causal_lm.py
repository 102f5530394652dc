"""The causal-LM task over the real wire: coordinator + 2 client processes, a tiny random
Llama, 1 round per method; the saved adapter is a standard PEFT CAUSAL_LM adapter."""

from __future__ import annotations

import json
import math

import pytest

from procs import finish, records, start_client, start_server, tail

CLIENTS = ["client-0", "client-1"]


def run_causal(tmp_path_factory, tiny_llama, strategy: str, extra: dict | None = None,
               rounds: int = 1):
    run_dir = tmp_path_factory.mktemp(strategy) / "run"
    server, address = start_server(run_dir, {
        "task": "causal-lm", "model": str(tiny_llama), "strategy": strategy, "rounds": rounds,
        "min_clients": 2, "clients": len(CLIENTS), "seed": 3, "generate_examples": 8,
        "eval_examples": 64, "adapter": {"rank": 4, "alpha": 8},
        "training": {"max_steps": 2, "batch_size": 8, "learning_rate": 0.01}, **(extra or {})})
    clients = [start_client(run_dir, address, c) for c in CLIENTS]
    codes = finish([server, *clients], timeout=400)
    assert codes == [0, 0, 0], tail(run_dir / "logs" / "coordinator.log")
    rounds_ = [r for r in records(run_dir, "round") if r["round"] > 0]
    assert len(rounds_) == rounds and rounds_[-1]["accepted"] == 2
    return run_dir, rounds_


@pytest.fixture(scope="module")
def fedavg_lora_run(tmp_path_factory, tiny_llama):
    return run_causal(tmp_path_factory, tiny_llama, "fedavg-lora")


def test_fedavg_lora_round_reports_response_loss_perplexity_and_exact_match(fedavg_lora_run):
    _, rounds = fedavg_lora_run
    last = rounds[-1]
    assert math.isfinite(last["test_loss"]) and last["test_loss"] > 0
    assert last["test_perplexity"] == pytest.approx(math.exp(last["test_loss"]), rel=1e-6)
    assert 0.0 <= last["test_accuracy"] <= 1.0
    assert last["test_exact_match_examples"] == 8


def test_final_adapter_is_a_causal_lm_peft_adapter_giving_the_reported_loss(fedavg_lora_run, tiny_llama):
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    from fedlora.common.evaluate import EvalOptions
    from fedlora.common.tasks import get_task

    run_dir, rounds = fedavg_lora_run
    config = json.loads((run_dir / "adapter" / "adapter_config.json").read_text())
    assert config["task_type"] == "CAUSAL_LM" and sorted(config["target_modules"]) == ["q_proj", "v_proj"]
    task = get_task("causal-lm")
    model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(str(tiny_llama)),
                                      str(run_dir / "adapter"))
    test = task.builtin_split("trec", 2, 0.5, 0.1, 3).test()
    score = task.evaluate(model, task.load_tokenizer(str(tiny_llama)), test,
                          EvalOptions(128, 128, generate_examples=0, max_examples=64), "cpu")
    assert score.loss == pytest.approx(rounds[-1]["test_loss"], rel=1e-5)
