"""The tasks a run can train, by the name ``ServerConfig.task`` and ``RunSpec.task`` carry."""

from __future__ import annotations

from fedlora.common.tasks.base import Task
from fedlora.common.tasks.causal_lm import CausalLMTask
from fedlora.common.tasks.classification import ClassificationTask

TASKS: dict[str, Task] = {t.name: t for t in (ClassificationTask(), CausalLMTask())}

# what a RunSpec without a task means: coordinators from before the field trained classifiers
DEFAULT_TASK = ClassificationTask.name


def get_task(name: str) -> Task:
    try:
        return TASKS[name]
    except KeyError:
        raise ValueError(f"unknown task {name!r} (known: {', '.join(sorted(TASKS))})") from None
