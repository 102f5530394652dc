"""``fedlora generate TARGET --prompt ...``: the greedy answer of a trained causal LM.

TARGET is a finished run folder (its base + final adapter, unmerged), or a model ``fedlora
export`` wrote (a merged folder or its ``.gguf``). The prompt is framed by
``causal_lm.generate``/``prompt_text``, the same chat template training used, so the answer is
the one the run's exact-match metric scored.
"""

from __future__ import annotations

from pathlib import Path

import torch

from fedlora.deploy.runs import finished_run


# what only a run folder holds (it has a config.json too: the run's configuration)
RUN_MARKERS = ("adapter", "summary.json", "metrics.jsonl")


def pick_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def load_for_generation(target: Path):
    """(model, tokenizer) for a run folder or an exported model."""
    is_run = any((target / n).exists() for n in RUN_MARKERS)
    if is_run or not (target.suffix.lower() == ".gguf" or (target / "config.json").is_file()):
        run = finished_run(target)
        if run.task.peft_task_type != "CAUSAL_LM":
            raise ValueError(f"run folder {target}: task {run.task.name!r} does not generate text")
        return run.load_adapted(), run.load_tokenizer()
    from fedlora.common.tasks.causal_lm import CausalLMTask

    task = CausalLMTask()
    return task.load_base(str(target), 0, 0), task.load_tokenizer(str(target))


def generate_answers(target: Path, prompts: list[str], max_new_tokens: int, device: str = "auto") -> list[str]:
    from fedlora.common.tasks.causal_lm import generate

    model, tokenizer = load_for_generation(target)
    dev = pick_device(device)
    model.to(dev)
    model.config.use_cache = True
    return generate(model, tokenizer, [[{"role": "user", "content": p}] for p in prompts],
                    max_new_tokens, dev)
