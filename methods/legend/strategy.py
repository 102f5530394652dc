"""LEGEND (arXiv 2412.20004): per-device LoRA depth and a rank distribution growing towards
the output, chosen from each device's measured profile so predicted round times even out.

Every round the planner (planner.py) reads each sampled client's latest profile:
per-block forward/backward seconds (measured at join, then fitted every round to the step
times measured at the depths the client really ran: client.py, fit_block_seconds), upload and
download rates (the join probe, then the round's real
transfers) and the plan's local steps, and assigns a depth and per-block ranks. Layers are
aggregated over the clients that trained them, mixed ranks with the HetLoRA or FlexLoRA rule
(``ranks.rule``). The predicted time of every client is logged with the round (and the
uniform plan's, for comparison); each client's record carries its plan's prediction by part
(``predicted``: round, train, upload, download and overhead seconds) beside what the client
measured under the same names (``measured``), so the planner's error is visible per client,
round and depth (``fedlora report``, bench/compare.py --suite heterogeneous).

Journal (resume after a coordinator restart): the planner keeps nothing from round to round
(``assignments`` and ``baseline`` are the current round's), so LEGEND's journaled state is
RankedLoRA's (adapter and FlexLoRA products). Its input is re-measured instead: each client's
profile arrives again when it rejoins the restarted coordinator and with every round's report.
"""

from __future__ import annotations

import math
import re
from typing import Any, ClassVar

from fedlora.common.training import steps_per_round
from fedlora.proto.v1 import fedlora_pb2 as pb
from fedlora.methods.legend.planner import Assignment, BlockShape, Device, plan, uniform
from fedlora.server.strategy import ClientInfo, Instruction, TensorSpec
from fedlora.methods.ranked import RankedLoRA, Ranks
from fedlora.methods.rules import Weighting

_BLOCK = re.compile(r"\.(?:layer|layers|h|block|blocks)\.(\d+)\.")


class Legend(RankedLoRA):
    name: ClassVar[str] = "legend"
    needs_link_rates: ClassVar[bool] = True  # the planner predicts transfer seconds
    # aggregation weighted by p_k (docs/methods.md), with either rule; ranks.weighting: norm
    # gives the HetLoRA paper's weights instead
    default_weighting: ClassVar[Weighting] = "examples"

    def __init__(self, cfg, model):
        super().__init__(cfg, model)
        self.block_of: dict[str, int] = {}
        for path in self.pairs:
            m = _BLOCK.search(path)
            if m is None:
                raise ValueError(f"strategy legend: cannot tell which block {path!r} belongs to")
            self.block_of[path] = int(m[1])
        blocks = sorted(set(self.block_of.values()))
        self.index = {b: i for i, b in enumerate(blocks)}  # block number -> position 0..L-1
        self.shapes: list[BlockShape] = [[] for _ in blocks]
        for path in sorted(self.pairs):
            self.shapes[self.index[self.block_of[path]]].append(self.dims[path])
        self.fixed_bytes = sum(math.prod(s) * 4 for s, _ in self.others.values())
        self.assignments: dict[str, Assignment] = {}
        self.baseline: dict[str, Assignment] = {}

    def device(self, c: ClientInfo) -> Device:
        p, L = c.profile, len(self.shapes)
        ls = dict(p.layer_seconds)
        t = self.cfg.training
        scale = t.batch_size / ls["batch"] if ls.get("batch") else 1.0
        steps = steps_per_round(self.base_plan(0).training, max(1, c.num_examples))
        return Device(
            client_id=c.id,
            forward_seconds=[ls.get(f"fwd.{i}", 0.0) * scale for i in range(L)],
            backward_seconds=[ls.get(f"bwd.{i}", 0.0) * scale for i in range(L)],
            fixed_seconds=ls.get("fixed", 0.0) * scale,
            steps=steps,
            up_bytes_per_second=p.upload_bytes_per_second, down_bytes_per_second=p.download_bytes_per_second,
            memory_bytes=p.memory_bytes, fixed_bytes=self.fixed_bytes,
            # the last round's cost beyond steps and transfers
            overhead_seconds=ls.get("round_overhead", 0.0))

    def ranks_for(self, rnd: int, clients: list[ClientInfo]) -> dict[str, Ranks]:
        lg = self.cfg.legend
        devices = [self.device(c) for c in clients]
        self.assignments = plan(devices, self.shapes, r_min=lg.r_min, r_max=self.r_max,
                                min_depth=min(lg.min_depth, len(self.shapes)),
                                deadline_s=lg.deadline_s or None, budget=lg.budget or None)
        self.baseline = uniform(devices, self.shapes, self.r_max)
        return {cid: {path: a.ranks[self.index[self.block_of[path]]] for path in self.pairs}
                for cid, a in self.assignments.items()}

    def configure(self, rnd: int, clients: list[ClientInfo]) -> dict[str, Instruction]:
        """RankedLoRA's plans at the planner's ranks, each with the planner's predicted seconds
        (round and parts), which the engine records beside the client's measured ones."""
        out = super().configure(rnd, clients)
        for cid, inst in out.items():
            a = self.assignments[cid]
            inst.prediction = {"round_seconds": a.predicted_seconds, **a.parts}
        return out

    def extend_plan(self, rnd: int, client: ClientInfo, ranks: Ranks, plan_: pb.Plan,
                    expected: dict[str, TensorSpec]) -> None:
        a = self.assignments[client.id]
        plan_.options["legend_depth"] = str(a.depth)
        plan_.options["legend_predicted_seconds"] = f"{a.predicted_seconds:.3f}"

    def aggregate(self, rnd: int) -> dict[str, Any]:
        metrics = super().aggregate(rnd)
        metrics["planned"] = {cid: {"depth": a.depth, "block_ranks": a.ranks,
                                    "predicted_seconds": round(a.predicted_seconds, 3),
                                    "uniform_predicted_seconds": round(self.baseline[cid].predicted_seconds, 3),
                                    "upload_bytes": a.upload_bytes}
                              for cid, a in sorted(self.assignments.items())}
        pred = [a.predicted_seconds for a in self.assignments.values()]
        base = [a.predicted_seconds for a in self.baseline.values()]
        metrics["predicted_spread_seconds"] = round(max(pred) - min(pred), 3) if pred else None
        metrics["uniform_predicted_spread_seconds"] = round(max(base) - min(base), 3) if base else None
        return metrics

