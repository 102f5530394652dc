"""`fedlora export` and `fedlora generate` as a user runs them, on the run folder a real federated
causal-LM run (coordinator + 2 client processes over gRPC, tiny Llama, FedAvg-LoRA) leaves."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch

from fedlora.deploy.export import GGUF_RELATIVE_TOLERANCE

from procs import run_causal

PROMPT = "What kind of answer does this question ask for? Question: Who was Galileo?"


def fedlora(*argv: str, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "fedlora.deploy.cli", *argv], capture_output=True,
                          text=True, timeout=timeout, env=dict(os.environ, HF_HUB_OFFLINE="1"))


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory, tiny_llama):
    return run_causal(tmp_path_factory, tiny_llama, "fedavg-lora")[0]


@pytest.fixture(scope="module")
def merged(run_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("export") / "merged"
    p = fedlora("export", str(run_dir), "--merge", str(out))
    assert p.returncode == 0, p.stderr
    return out, p.stdout


def _ids(tokenizer):
    from fedlora.common.tasks.causal_lm import prompt_text

    text = prompt_text(tokenizer, [{"role": "user", "content": PROMPT}])
    return tokenizer(text, add_special_tokens=False, return_tensors="pt")


def test_merged_folder_alone_gives_the_logits_of_base_plus_the_runs_adapter(merged, run_dir, tiny_llama):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    out, _ = merged
    tok = AutoTokenizer.from_pretrained(str(out))
    with torch.no_grad():
        got = AutoModelForCausalLM.from_pretrained(str(out))(**_ids(tok)).logits
        want = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(str(tiny_llama)),
                                         str(run_dir / "adapter"))(**_ids(tok)).logits
    assert torch.allclose(got, want, atol=1e-5)


def test_gguf_reads_back_with_the_merged_models_logits_to_f16_rounding(merged):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    out, stdout = merged
    assert f"gguf: {out / 'model-f16.gguf'}" in stdout
    tok = AutoTokenizer.from_pretrained(str(out), gguf_file="model-f16.gguf")
    with torch.no_grad():
        gguf = AutoModelForCausalLM.from_pretrained(str(out), gguf_file="model-f16.gguf",
                                                    dtype=torch.float32)(**_ids(tok)).logits
        ref = AutoModelForCausalLM.from_pretrained(str(out))(**_ids(tok)).logits
    scale = float(ref.abs().max())
    assert 0 < float((gguf - ref).abs().max()) < GGUF_RELATIVE_TOLERANCE * max(1.0, scale)


def test_generate_prints_the_runs_greedy_answer(run_dir, merged, tiny_llama):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from fedlora.common.tasks.causal_lm import generate

    p = fedlora("generate", str(run_dir), "--prompt", PROMPT, "--max-new-tokens", "5", "--device", "cpu")
    assert p.returncode == 0, p.stderr
    tok = AutoTokenizer.from_pretrained(str(run_dir / "adapter"))
    model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(str(tiny_llama)),
                                      str(run_dir / "adapter"))
    assert p.stdout == generate(model, tok, [[{"role": "user", "content": PROMPT}]], 5, "cpu")[0] + "\n"
    # the exported folder answers the same
    q = fedlora("generate", str(merged[0]), "--prompt", PROMPT, "--max-new-tokens", "5", "--device", "cpu")
    assert q.returncode == 0 and q.stdout == p.stdout


@pytest.mark.parametrize("what", ["missing", "unfinished", "no-adapter"])
def test_a_folder_that_is_not_a_finished_run_is_one_line_and_exit_2(what, tmp_path):
    run = tmp_path / "run"
    if what != "missing":
        (run / "logs").mkdir(parents=True)
    if what == "no-adapter":
        (run / "summary.json").write_text('{"status": "complete"}')
    for argv in (["export", str(run), "--merge", str(tmp_path / "out")], ["generate", str(run), "--prompt", "hi"]):
        p = fedlora(*argv, timeout=120)
        assert p.returncode == 2 and p.stdout == ""
        assert len(p.stderr.strip().splitlines()) == 1 and str(run) in p.stderr
    assert not (tmp_path / "out").exists()
