"""A finished run folder's final model, as ``fedlora export`` and ``fedlora generate`` read it.

The coordinator writes ``RUN/adapter`` whole at the end (server/app.py ``_save_results``): a PEFT
adapter folder, or for full fine-tuning a whole Hugging Face model folder, plus the tokenizer
and ``fedlora.json`` (base model, task, labels, seed). A folder that lacks any of it, or whose
``summary.json`` does not say ``complete``, is refused with one line naming what is missing.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from torch import nn

ADAPTER_DIR = "adapter"
RECORD_FILE = "fedlora.json"
SUMMARY_FILE = "summary.json"
PEFT_CONFIG_FILE = "adapter_config.json"

# peft task type -> the transformers class a merged model of that type loads with
AUTO_CLASSES = {"CAUSAL_LM": "AutoModelForCausalLM", "SEQ_CLS": "AutoModelForSequenceClassification"}


@dataclass(frozen=True)
class FinishedRun:
    folder: Path
    record: dict[str, Any]  # fedlora.json

    @property
    def adapter(self) -> Path:
        return self.folder / ADAPTER_DIR

    @property
    def is_peft(self) -> bool:
        """False for full fine-tuning, whose ``adapter`` folder is a whole model."""
        return (self.adapter / PEFT_CONFIG_FILE).is_file()

    @property
    def task(self):
        from fedlora.common.tasks import DEFAULT_TASK, get_task

        return get_task(self.record.get("task", DEFAULT_TASK))

    def auto_class(self):
        import transformers

        return getattr(transformers, AUTO_CLASSES[self.task.peft_task_type])

    def load_tokenizer(self):
        """The tokenizer the coordinator saved beside the adapter (the one training used)."""
        from transformers import AutoTokenizer

        tok = AutoTokenizer.from_pretrained(str(self.adapter))
        if tok.pad_token is None and tok.eos_token is not None:
            tok.pad_token = tok.eos_token
        return tok

    def load_base(self) -> nn.Module:
        """The base the run started from, as the task loads it (GGUF dequantised to float32)."""
        r = self.record
        return self.task.load_base(r["base_model"], int(r.get("num_labels", 0)), int(r.get("seed", 0)))

    def load_adapted(self) -> nn.Module:
        """Base + adapter, unmerged (a ``PeftModel``), or the full fine-tuned model."""
        import torch

        if not self.is_peft:
            return self.auto_class().from_pretrained(str(self.adapter), dtype=torch.float32)
        from peft import PeftModel

        return PeftModel.from_pretrained(self.load_base(), str(self.adapter))


def finished_run(folder: Path) -> FinishedRun:
    """The run in ``folder``; ``FileNotFoundError``/``ValueError`` (one line) when it is not a
    finished run with a final model."""
    if not folder.is_dir():
        raise FileNotFoundError(f"run folder {folder}: not found")
    summary_path = folder / SUMMARY_FILE
    if not summary_path.is_file():
        raise ValueError(f"run folder {folder}: no {SUMMARY_FILE} (the run has not finished)")
    try:
        status = json.loads(summary_path.read_text()).get("status")
    except ValueError:
        raise ValueError(f"run folder {folder}: {SUMMARY_FILE} is not JSON") from None
    if status != "complete":
        raise ValueError(f"run folder {folder}: the run did not complete (status {status!r})")
    record_path = folder / ADAPTER_DIR / RECORD_FILE
    if not record_path.is_file():
        raise FileNotFoundError(f"run folder {folder}: no final model ({ADAPTER_DIR}/{RECORD_FILE}; "
                                f"methods without a global model save none)")
    record = json.loads(record_path.read_text())
    if "base_model" not in record:
        raise ValueError(f"{record_path}: no base_model")
    run = FinishedRun(folder, record)
    if run.task.peft_task_type not in AUTO_CLASSES:
        raise ValueError(f"run folder {folder}: task {run.task.name!r} has no exportable model class")
    return run
