"""``fedlora export RUN --merge OUT``: a finished run's model as files other tools run.

OUT gets the merged model as a plain Hugging Face folder (the LoRA update folded into the base
weights, safetensors, no adapter, no ``quantization_config``: ``from_pretrained(OUT)`` alone
loads it), its tokenizer and generation config; for a Llama-family causal LM also
``model-f16.gguf`` for llama.cpp and the tools built on it. Nothing is trusted unchecked: the
folder is read back from disk and its logits compared with base + adapter on a few probe
prompts, the GGUF read back by transformers (tokenizer and model) and compared with the merged
model; a difference past the tolerance fails the export and leaves no OUT.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from fedlora.common.storage import atomic_dir
from fedlora.deploy.runs import FinishedRun, finished_run

log = logging.getLogger("fedlora.export")

GGUF_FILE = "model-f16.gguf"
# Both tolerances are fractions of the largest logit magnitude (at least 1). Merging re-orders
# float32 sums only (SmolLM2-135M: 9.7e-5 at logits up to 38.6, 2.5e-6 of them)
MERGE_RELATIVE_TOLERANCE = 1e-4
# f16 weights keep ~11 significant bits (SmolLM2-135M: 0.04 at 38.6, 1e-3; the tiny random
# Llama about 2e-3); a wrong tensor layout moves logits by about their magnitude itself
GGUF_RELATIVE_TOLERANCE = 0.01

PROBE_QUESTIONS = ("How far is it from Denver to Aspen?", "What county is Modesto, California in?",
                   "Who was Galileo?", "What does NASA stand for?")


class ExportCheckFailed(RuntimeError):
    """A written file does not reproduce the model it was written from."""


@dataclass
class ExportReport:
    out: Path
    merge_diff: float
    gguf: Path | None = None
    gguf_diff: float | None = None
    gguf_scale: float | None = None
    gguf_skipped: str = ""  # why no GGUF was written
    seconds: dict[str, float] = field(default_factory=dict)


def adds_special(run: FinishedRun) -> bool:
    return run.task.peft_task_type != "CAUSAL_LM"


def probe_texts(run: FinishedRun, tokenizer) -> list[str]:
    """The inputs every check compares logits on: the task's own prompt framing."""
    if run.task.peft_task_type == "CAUSAL_LM":
        from fedlora.common.tasks.causal_lm import TREC_INSTRUCTION, prompt_text

        return [prompt_text(tokenizer, [{"role": "user", "content": TREC_INSTRUCTION.format(question=q)}])
                for q in PROBE_QUESTIONS]
    return list(PROBE_QUESTIONS)


@torch.no_grad()
def logits_of(model: nn.Module, tokenizer, texts: list[str], special: bool) -> list[torch.Tensor]:
    """Per text (unbatched: no padding to line up), the float32 logits; ``special``: let the
    tokenizer add its special tokens (classification does; a causal prompt is framed whole)."""
    model.eval()
    out = []
    for t in texts:
        ids = tokenizer(t, add_special_tokens=special, return_tensors="pt")
        out.append(model(**ids).logits.float())
    return out


def max_diff(a: list[torch.Tensor], b: list[torch.Tensor]) -> float:
    return max(float((x - y).abs().max()) for x, y in zip(a, b))


def _prepare(merged: nn.Module, tokenizer, run: FinishedRun) -> None:
    """What the saved config must say for the folder to stand alone."""
    cfg = merged.config  # a GGUF base's quantizer and quantization_config: the task's loader drops them
    if getattr(cfg, "quantization_config", None) is not None:
        del cfg.quantization_config
    if run.task.peft_task_type == "CAUSAL_LM":
        cfg.use_cache = True  # training turned it off; generation wants it
        gen = merged.generation_config
        gen.bos_token_id = tokenizer.bos_token_id
        gen.eos_token_id = tokenizer.eos_token_id
        gen.pad_token_id = tokenizer.pad_token_id
    else:
        names = run.record.get("label_names") or []
        if names:
            cfg.id2label = dict(enumerate(names))
            cfg.label2id = {n: i for i, n in enumerate(names)}


def _gguf_reason(run: FinishedRun, merged: nn.Module) -> str:
    if run.task.peft_task_type != "CAUSAL_LM":
        return "GGUF is written for causal LMs only"
    if merged.config.model_type != "llama":
        return f"GGUF is written for Llama-family models only (this one: {merged.config.model_type})"
    return ""


def _write_gguf(run: FinishedRun, merged: nn.Module, tokenizer, folder: Path,
                texts: list[str], reference: list[torch.Tensor], rep: ExportReport) -> None:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from fedlora.common.gguf_export import DEFAULT_PRE, write_llama_gguf, source_pre_tokenizer

    base = str(run.record["base_model"])
    pre = (source_pre_tokenizer(Path(base)) if base.lower().endswith(".gguf") else None) or DEFAULT_PRE
    t0 = time.perf_counter()
    path = write_llama_gguf(merged, tokenizer, folder / GGUF_FILE, pre=pre,
                            name=f"fedlora {run.record.get('strategy', '')} {run.folder.name}".strip())
    rep.seconds["gguf_write"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    # read back from the file alone: a folder holding nothing else, so no config.json can help
    back_tok = AutoTokenizer.from_pretrained(str(folder), gguf_file=GGUF_FILE)
    for t in texts:
        for special in (False, True):
            a = tokenizer(t, add_special_tokens=special)["input_ids"]
            b = back_tok(t, add_special_tokens=special)["input_ids"]
            if a != b:
                raise ExportCheckFailed(f"{GGUF_FILE}: its tokenizer splits a probe prompt differently "
                                        f"({len(a)} vs {len(b)} tokens)")
    if (back_tok.chat_template or None) != (getattr(tokenizer, "chat_template", None) or None):
        raise ExportCheckFailed(f"{GGUF_FILE}: the chat template did not survive")
    back = AutoModelForCausalLM.from_pretrained(str(folder), gguf_file=GGUF_FILE, dtype=torch.float32)
    diff = max_diff(reference, logits_of(back, tokenizer, texts, special=False))
    scale = max(float(x.abs().max()) for x in reference)
    rep.seconds["gguf_check"] = time.perf_counter() - t0
    rep.gguf, rep.gguf_diff, rep.gguf_scale = path, diff, scale
    if not diff <= GGUF_RELATIVE_TOLERANCE * max(1.0, scale):
        raise ExportCheckFailed(f"{GGUF_FILE}: logits differ from the merged model by {diff:.4g} "
                                f"(tolerance {GGUF_RELATIVE_TOLERANCE} x {max(1.0, scale):.3g})")


def export(run_dir: Path, out: Path, gguf: bool = True, force: bool = False) -> ExportReport:
    """Writes OUT (whole or not at all) and returns what the checks measured."""
    run = finished_run(run_dir)
    if out.exists() and (not out.is_dir() or any(out.iterdir())) and not force:
        raise FileExistsError(f"output folder {out}: exists and is not empty (--force replaces it)")
    times: dict[str, float] = {}
    t0 = time.perf_counter()
    tokenizer = run.load_tokenizer()
    adapted = run.load_adapted()
    times["load"] = time.perf_counter() - t0
    texts = probe_texts(run, tokenizer)
    special = adds_special(run)
    before = logits_of(adapted, tokenizer, texts, special)
    t0 = time.perf_counter()
    merged = adapted.merge_and_unload() if run.is_peft else adapted
    _prepare(merged, tokenizer, run)
    times["merge"] = time.perf_counter() - t0
    with atomic_dir(out) as folder:
        t0 = time.perf_counter()
        merged.save_pretrained(str(folder), safe_serialization=True)
        tokenizer.save_pretrained(str(folder))
        times["save"] = time.perf_counter() - t0
        reloaded = run.auto_class().from_pretrained(str(folder), dtype=torch.float32)
        merged_logits = logits_of(reloaded, tokenizer, texts, special)
        diff = max_diff(before, merged_logits)
        bound = MERGE_RELATIVE_TOLERANCE * max(1.0, max(float(x.abs().max()) for x in before))
        if not diff <= bound:
            raise ExportCheckFailed(f"merged model: logits differ from base + adapter by {diff:.3g} "
                                    f"(tolerance {bound:.3g})")
        rep = ExportReport(out, diff, seconds=times)
        rep.gguf_skipped = "--no-gguf" if not gguf else _gguf_reason(run, merged)
        if not rep.gguf_skipped:
            gguf_dir = folder / ".gguf-check"  # the file alone, for the read-back
            gguf_dir.mkdir()
            _write_gguf(run, reloaded, tokenizer, gguf_dir, texts, merged_logits, rep)
            (gguf_dir / GGUF_FILE).replace(folder / GGUF_FILE)
            gguf_dir.rmdir()
            rep.gguf = out / GGUF_FILE
    return rep


def print_report(rep: ExportReport) -> None:
    print(f"merged model: {rep.out} (max |logit diff| vs base + adapter {rep.merge_diff:.3g})")
    if rep.gguf is not None:
        size = rep.gguf.stat().st_size / 2**20
        print(f"gguf: {rep.gguf} ({size:.1f} MiB, f16; max |logit diff| vs merged {rep.gguf_diff:.3g}, "
              f"logits up to {rep.gguf_scale:.3g})")
    else:
        print(f"gguf: not written ({rep.gguf_skipped})")
    print("seconds: " + ", ".join(f"{k} {v:.1f}" for k, v in rep.seconds.items()))
