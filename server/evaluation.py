"""The coordinator's evaluation off the critical path: the next round is planned and sent as
soon as the aggregate exists, while the aggregate is scored beside it.

Two parts. :class:`EvalCopy` is the one extra model the coordinator keeps: a copy of the
strategy's model that shares every base tensor the strategy never changes and owns the rest
(the adapter state, plus :meth:`Strategy.moving_tensors`), so a snapshot of the global model
is a copy of those tensors into it, and the next round's aggregation, which writes into the
strategy's model, cannot change what is being scored. What it costs: the adapter's size for
the LoRA methods (FLoRA: also the base weights of its adapted layers, which it merges into);
a model-sized copy for full FedAvg, whose whole model is its state. :class:`Background` runs
one evaluation at a time on a thread of its own: the engine waits for the previous one
before it takes the next snapshot, so the copy is never overwritten while it is scored.
"""

from __future__ import annotations

import copy
import logging
import threading
from collections.abc import Callable, Sequence

import torch

from fedlora.common.model import AdaptedModel

log = logging.getLogger("fedlora.server")


class EvalCopy:
    """The evaluation copy of ``model``, built on the first :meth:`take` (a method that never
    asks for one pays nothing)."""

    def __init__(self, model: AdaptedModel, moving: Callable[[], Sequence[torch.Tensor]] = list):
        self.model = model
        self.moving = moving  # tensors outside the adapter state that aggregation changes
        self._copy: AdaptedModel | None = None
        self._pairs: list[tuple[torch.Tensor, torch.Tensor]] = []  # (the model's, the copy's)

    def take(self) -> AdaptedModel:
        """The copy, holding the model's state now. Call it while nothing changes the model
        (between aggregation and the next round's), and not while the copy is being scored."""
        if self._copy is None:
            self._build()
        else:
            with torch.no_grad():
                for src, dst in self._pairs:
                    dst.copy_(src)
        assert self._copy is not None
        return self._copy

    def _build(self) -> None:
        """deepcopy with every tensor of the model except the owned ones pre-seeded in the
        memo: those are shared, not copied; the memo then maps each owned tensor to its copy."""
        owned = [p for p in (self.model.parameter(n) for n in self.model.names())]
        owned += list(self.moving())
        owned_ids = {id(t) for t in owned}
        memo: dict[int, object] = {}
        for t in (*self.model.model.parameters(), *self.model.model.buffers()):
            if id(t) not in owned_ids:
                memo[id(t)] = t
        self._copy = copy.deepcopy(self.model, memo)
        self._pairs = [(src, memo[id(src)]) for src in owned]  # type: ignore[misc]
        self._copy.model.eval()


class Background:
    """At most one job in flight, each on a daemon thread of its own."""

    def __init__(self) -> None:
        self._thread: threading.Thread | None = None

    def submit(self, name: str, job: Callable[[], None]) -> None:
        """Starts ``job`` once the previous one has ended. ``job`` handles its own errors (one
        that escapes is logged: a thread's exception would otherwise be printed and lost)."""
        self.wait()

        def run() -> None:
            try:
                job()
            except Exception:  # noqa: BLE001 - the job's own handler failed: say so
                log.exception("%s failed", name)

        self._thread = threading.Thread(target=run, name=name, daemon=True)
        self._thread.start()

    def wait(self) -> None:
        """Until the job in flight (if any) has ended."""
        if self._thread is not None:
            self._thread.join()
            self._thread = None
