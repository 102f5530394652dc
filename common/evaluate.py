"""What an evaluation reports, whatever the task: every task's ``evaluate`` returns a
:class:`Score`, so the engine, the run log and the clients' reports read the same fields."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Score:
    accuracy: float
    loss: float
    examples: int
