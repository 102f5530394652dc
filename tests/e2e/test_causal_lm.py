"""The causal-LM task over the real wire: coordinator + 2 client processes, a tiny random
Llama, 1 round per method (2 where a method shows nothing in one: SA-FedLoRA's pruning,
FLoRA's growing stack); each test checks what is specific to its method."""

from __future__ import annotations

import json
import math
import re

import pytest

from procs import CAUSAL_CLIENTS as CLIENTS, records, run_causal

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


def test_clients_score_their_hold_out_within_the_runs_evaluation_bounds(fedavg_lora_run):
    """The run's generate_examples (8 here) bounds a client's evaluation too: it sits between
    training and upload, on the round's critical path (clients used to answer 32)."""
    run_dir, _ = fedavg_lora_run
    for rec in _last_client_records(run_dir).values():
        assert rec["metrics"]["local_exact_match_examples"] == 8
        assert rec["metrics"]["local_perplexity"] > 1.0


def test_a_run_that_generates_no_answers_is_scored_by_loss_alone_on_both_sides(tmp_path_factory,
                                                                               tiny_llama):
    """generate_examples 0: no exact match anywhere; a client leaves the unmeasured figure out
    of its report (a NaN in it had the coordinator refuse the report, and the round lost it)."""
    run_dir, rounds = run_causal(tmp_path_factory, tiny_llama, "fedavg-lora", {"generate_examples": 0})
    assert rounds[-1]["accepted"] == 2 and math.isfinite(rounds[-1]["test_loss"])
    for rec in _last_client_records(run_dir).values():
        assert rec["status"] == "accepted" and "local_accuracy" not in rec["metrics"]
        assert rec["metrics"]["local_exact_match_examples"] == 0


def test_final_adapter_is_a_causal_lm_peft_adapter_giving_the_reported_loss(fedavg_lora_run, tiny_llama):
    run_dir, rounds = fedavg_lora_run
    config = json.loads((run_dir / "adapter" / "adapter_config.json").read_text())
    assert config["task_type"] == "CAUSAL_LM" and sorted(config["target_modules"]) == ["q_proj", "v_proj"]
    assert _adapter_loss(run_dir, tiny_llama) == pytest.approx(rounds[-1]["test_loss"], rel=1e-5)


# --- every other method on the causal-LM task: what is specific to each ---------------------

R = 4  # adapter.rank of run_causal
LAYERS = 2  # decoder layers of the tiny Llama


def _upload(run_dir, cid: str) -> dict:
    from fedlora.common.wire.blob import unpack

    tensors, _ = unpack((run_dir / "state" / cid / "last-upload.safetensors").read_bytes())
    return tensors


def _last_client_records(run_dir) -> dict[str, dict]:
    recs = records(run_dir, "client")
    last = max(r["round"] for r in recs)
    return {r["client"]: r for r in recs if r["round"] == last}


def _layer(name: str) -> int:
    return int(name.split(".layers.")[1].split(".")[0])


def _sent_ranks(run_dir, cid: str) -> dict[str, int]:
    """Module path -> rank of what the client really sent last."""
    from fedlora.common.model import lora_pairs

    tensors = _upload(run_dir, cid)
    return {p: tensors[a].shape[0] for p, (a, _) in lora_pairs(tensors).items()}


def _adapter_loss(run_dir, tiny_llama) -> float:
    """The test loss of the saved adapter on the untouched base, as a user would load it."""
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    from fedlora.common.data import SplitPlan
    from fedlora.common.evaluate import EvalOptions
    from fedlora.common.tasks import get_task

    task = get_task("causal-lm")
    model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(str(tiny_llama)),
                                      str(run_dir / "adapter"))
    test = task.federated_split("trec", SplitPlan(2, alpha=0.5, test_fraction=0.1, seed=3)).test()
    return task.evaluate(model, task.load_tokenizer(str(tiny_llama)), test,
                         EvalOptions(128, 128, generate_examples=0, max_examples=64), "cpu").loss


def test_full_fedavg_sends_every_weight_of_the_llama(tmp_path_factory, tiny_llama):
    from transformers import AutoModelForCausalLM

    run_dir, rounds = run_causal(tmp_path_factory, tiny_llama, "fedavg")
    base = AutoModelForCausalLM.from_pretrained(str(tiny_llama))
    params = dict(base.named_parameters())  # the tied lm_head is the embedding: listed once
    full_bytes = 4 * sum(p.numel() for p in params.values())
    for cid in CLIENTS:
        up = _upload(run_dir, cid)
        assert {n: tuple(t.shape) for n, t in up.items()} == {n: tuple(p.shape) for n, p in params.items()}
    for rec in _last_client_records(run_dir).values():
        assert rec["up"]["tensor_bytes"] == rec["down"]["tensor_bytes"] == full_bytes
    assert math.isfinite(rounds[-1]["test_loss"])


def test_ffa_lora_with_dp_sgd_sends_only_b_over_the_seeded_a_and_accounts_epsilon(tmp_path_factory,
                                                                                   tiny_llama):
    import torch
    from safetensors.torch import load_file

    from fedlora.common.model import seeded_lora_a

    run_dir, rounds = run_causal(tmp_path_factory, tiny_llama, "ffa-lora", {
        "training": {"max_steps": 2, "batch_size": 8, "learning_rate": 0.1,
                     "dp": {"enabled": True, "target_epsilon": 8.0, "clip_norm": 1.0}}})
    adapter = load_file(str(run_dir / "adapter" / "adapter_model.safetensors"))
    b_names = {n for n in adapter if ".lora_B." in n}
    assert len(b_names) == 2 * LAYERS and set(adapter) - b_names == {
        n.replace(".lora_B.", ".lora_A.") for n in b_names}  # q_proj, v_proj; nothing else trained
    uploads = {cid: _upload(run_dir, cid) for cid in CLIENTS}
    for up in uploads.values():
        assert set(up) == b_names  # only B travels
    for a_name in set(adapter) - b_names:  # every process drew the same A from the seed (and
        a = adapter[a_name]                # the coordinator accepted both clients' digests)
        torch.testing.assert_close(a, seeded_lora_a(3, a_name, tuple(a.shape)), rtol=0, atol=0)
    weights = {r["client"]: r["metrics"]["num_examples"] for r in _last_client_records(run_dir).values()}
    for b in b_names:  # B A is the n_k-weighted mean of the clients' products: exact
        a = adapter[b.replace(".lora_B.", ".lora_A.")].double()
        direct = sum(w * (uploads[c][b].double() @ a) for c, w in weights.items()) / sum(weights.values())
        torch.testing.assert_close(adapter[b].double() @ a, direct, rtol=0, atol=1e-6)
    eps = [r["metrics"]["dp_epsilon"] for r in _last_client_records(run_dir).values()]
    assert all(0 < e <= 8.0 * 1.0001 for e in eps) and rounds[-1]["dp_epsilon"] == max(eps)


@pytest.mark.parametrize("strategy", ["hetlora", "flexlora"])
def test_rank_heterogeneous_methods_train_each_client_at_its_own_rank(tmp_path_factory, tiny_llama,
                                                                       strategy):
    from safetensors.torch import load_file

    from fedlora.common.model import lora_pairs

    run_dir, rounds = run_causal(tmp_path_factory, tiny_llama, strategy)
    planned = rounds[-1]["strategy"]["client_ranks"]
    assert {c: set(p["ranks"]) for c, p in planned.items()} == {"client-0": {R}, "client-1": {R // 2}}
    for cid in CLIENTS:
        sent = _sent_ranks(run_dir, cid)
        assert len(sent) == 2 * LAYERS and all(p.rsplit(".", 1)[-1] in ("q_proj", "v_proj") for p in sent)
        assert set(sent.values()) == set(planned[cid]["ranks"])
    up = {c: r["up"]["tensor_bytes"] for c, r in _last_client_records(run_dir).items()}
    assert up["client-1"] * 2 == up["client-0"]  # half the rank, half the factors
    adapter = load_file(str(run_dir / "adapter" / "adapter_model.safetensors"))
    assert all(adapter[a].shape[0] == R for a, _ in lora_pairs(adapter).values())  # r_max


def test_sa_fedlora_prunes_the_budget_after_the_initiating_round(tmp_path_factory, tiny_llama):
    from fedlora.methods.sa_fedlora.importance import IMPORTANCE_PREFIX

    run_dir, rounds = run_causal(tmp_path_factory, tiny_llama, "sa-fedlora", {"sa_fedlora": {
        "initiating_rounds": 1, "heating_rounds": 0, "cooling_rounds": 1, "final_rank": 1,
        "prox_mu": 0.5}}, rounds=2)
    first, second = rounds
    assert first["strategy"]["stage"] == "initiating"
    assert first["strategy"]["client_ranks"]["client-0"]["total"] == 2 * LAYERS * R
    assert first["strategy"]["total_rank_next"] == 2 * LAYERS  # final_rank 1 per layer
    for cid in CLIENTS:
        ranks = second["strategy"]["client_ranks"][cid]["ranks"]
        assert sum(ranks) == 2 * LAYERS and sorted(_sent_ranks(run_dir, cid).values()) == sorted(ranks)
        scores = [t for n, t in _upload(run_dir, cid).items() if n.startswith(IMPORTANCE_PREFIX)]
        assert sorted(t.numel() for t in scores) == sorted(ranks)  # a score per kept triplet
    up = {}
    for r in records(run_dir, "client"):
        up.setdefault(r["round"], set()).add(r["up"]["tensor_bytes"])
    assert max(up[2]) < min(up[1])
    log = (run_dir / "logs" / "client-0.log").read_text()
    assert re.search(r"round 1: loss [0-9.]+, prox_mu 0\.5,", log)
    assert not re.search(r"round 2: .*prox_mu", log)


def test_legend_profiles_the_llama_layers_and_adapts_only_the_top_ones(tmp_path_factory, tiny_llama):
    # a total budget (block ranks summed over clients) of one block at rank R per client
    # leaves room for depth 1 only: plans that do not depend on measured times
    run_dir, rounds = run_causal(tmp_path_factory, tiny_llama, "legend",
                                 {"legend": {"r_min": 2, "budget": len(CLIENTS) * R}})
    profiles = [r["profile"]["layer_seconds"] for r in records(run_dir, "profile")]
    assert profiles and all({f"{d}.{i}" for d in ("fwd", "bwd") for i in range(LAYERS)} <= set(p)
                            for p in profiles)  # found model.model.layers under peft's wrapper
    planned = rounds[-1]["strategy"]["planned"]
    for cid in CLIENTS:
        assert planned[cid]["depth"] == 1 and planned[cid]["block_ranks"] == [0, R]
        sent = _sent_ranks(run_dir, cid)
        assert {p.split(".layers.")[1] for p in sent} == {"1.self_attn.q_proj", "1.self_attn.v_proj"}
        assert set(sent.values()) == {R}


def test_ce_lora_sends_only_c_and_one_mean_prompt_embedding(tmp_path_factory, tiny_llama):
    import torch

    from fedlora.methods.ce_lora.stats import STATS_COUNT, STATS_MEAN

    run_dir, rounds = run_causal(tmp_path_factory, tiny_llama, "ce-lora")
    counts = {r["client"]: r["metrics"]["num_examples"] for r in _last_client_records(run_dir).values()}
    for cid in CLIENTS:
        up = _upload(run_dir, cid)
        cs = {n for n in up if n.endswith(".lora_C")}
        assert len(cs) == 2 * LAYERS and all(up[n].shape == (R, R) for n in cs)
        assert set(up) - cs == {STATS_MEAN, STATS_COUNT}  # no A, B: they stay on the client
        assert up[STATS_MEAN].shape == (1, 32) and bool(torch.isfinite(up[STATS_MEAN]).all())
        assert float(up[STATS_COUNT][0]) == counts[cid]  # one group: all training examples
    last = rounds[-1]
    weights = last["strategy"]["weights"]
    assert set(weights) == set(CLIENTS) and all(sum(w.values()) == pytest.approx(1) for w in weights.values())
    assert last["evaluated_by"] == "clients" and math.isfinite(last["test_loss"])


def test_flora_stacks_every_round_and_the_stack_is_the_global_model(tmp_path_factory, tiny_llama):
    from safetensors.torch import load_file

    from fedlora.common.model import lora_pairs

    run_dir, rounds = run_causal(tmp_path_factory, tiny_llama, "flora", rounds=2)
    assert [r["strategy"]["stack_rank"] for r in rounds] == [2 * R, 4 * R]
    down = {}
    for r in records(run_dir, "client"):
        down.setdefault(r["round"], set()).add(r["down"]["tensor_bytes"])
    assert min(down[2]) > max(down[1])  # round 1's stack rides with round 2's download
    adapter = load_file(str(run_dir / "adapter" / "adapter_model.safetensors"))
    assert all(adapter[a].shape[0] == 4 * R for a, _ in lora_pairs(adapter).values())
    assert _adapter_loss(run_dir, tiny_llama) == pytest.approx(rounds[-1]["test_loss"], rel=1e-5)
