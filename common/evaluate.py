"""What an evaluation reports, whatever the task: every task's ``evaluate`` returns a
:class:`Score`, so the engine, the run log and the clients' reports read the same fields."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class Score:
    """``accuracy`` is the task's own metric (classification accuracy; exact match of a
    generated answer); ``extra`` holds a task's further figures (perplexity), recorded as
    ``test_<name>``."""

    accuracy: float
    loss: float
    examples: int
    extra: dict[str, float] = field(default_factory=dict)


@dataclass(frozen=True)
class EvalOptions:
    """How an evaluation runs: batch and truncation for every task; for generative tasks, how
    many examples are answered by greedy decoding (per evaluation) and how long an answer may be."""

    batch_size: int = 128
    max_length: int = 128
    generate_examples: int = 64
    max_new_tokens: int = 8
    max_examples: int = 0  # loss over at most this many (the first) examples; 0 = all
