"""LoRA with ranks that vary by client and by layer: the base of HetLoRA, FlexLoRA, SA-FedLoRA
and LEGEND.

Subclasses only decide ranks (:meth:`RankedLoRA.ranks_for`: module path -> rank, 0 = no LoRA
on that layer for this client) and may add to the plan (:meth:`RankedLoRA.extend_plan`);
this class turns ranks into adapter specs, cuts each client's download from the global state
at its ranks, derives the exact upload shapes the engine validates, and aggregates per layer
over the clients that trained it with the HetLoRA or FlexLoRA rule (server/hetrank.py).

The coordinator's global state (and evaluation model, and final adapter) holds every layer at
``r_max = adapter.rank`` with peft's scaling ``alpha / r_max``. Under FlexLoRA the exact
aggregate ``dW`` of each layer is kept as well and every download is cut from it by SVD; the
evaluation model then holds its best rank-``r_max`` approximation.
"""

from __future__ import annotations

import math
import re
from abc import abstractmethod
from typing import Any, ClassVar, Literal

import torch

from pydantic import Field

from fedlora.common.config import ServerConfig, Strict
from fedlora.common.model import adapter_spec_from_config, lora_pairs
from fedlora.methods.rules import (HetLoRASum, ProductSum, WeightedSum, Weighting, redistribute, scaling,
                                   truncate)
from fedlora.proto.v1 import fedlora_pb2 as pb
from fedlora.server.strategy import ClientInfo, Instruction, Strategy, TensorSpec, split_prefixed

Ranks = dict[str, int]
PRODUCTS = "products/"  # journaled FlexLoRA products, by module path


class RanksConfig(Strict):
    """Per-client LoRA ranks for rank-varying methods, and the rule combining mixed ranks.

    A client's rank is ``client_ranks[id]`` if given; else, with ``source: memory``, ``adapter.rank``
    scaled by its memory against the best-provisioned client (a power of two); else ``cycle``
    indexed by its partition (default: ``adapter.rank``, half, a quarter, ...).
    """

    rule: Literal["hetlora", "flexlora"] = "flexlora"
    weighting: Literal["examples", "norm"] | None = Field(
        None, description="the HetLoRA rule's weights: n_k (p_k), or the HetLoRA paper's "
                          "||s_k B_k A_k||_F; unset: the method's own (HetLoRA: norm; LEGEND: "
                          "examples, docs/methods.md)")
    client_ranks: dict[str, int] = Field(default_factory=dict)
    cycle: list[int] = Field(default_factory=list)
    source: Literal["spec", "memory"] = "spec"
    min_rank: int = Field(1, ge=1)

    def check(self, cfg: Any) -> None:
        for where, ranks in (("ranks.client_ranks", list(self.client_ranks.values())),
                             ("ranks.cycle", self.cycle)):
            bad = [r for r in ranks if not 1 <= r <= cfg.adapter.rank]
            if bad:
                raise ValueError(f"{where}: rank {bad[0]} outside 1..adapter.rank ({cfg.adapter.rank})")



class RankedLoRA(Strategy):
    server_evaluates: ClassVar[bool] = True
    # the HetLoRA rule's weights when ranks.weighting is unset: the HetLoRA paper's norm
    default_weighting: ClassVar[Weighting] = "norm"

    @classmethod
    def adapter_spec(cls, cfg: ServerConfig) -> pb.AdapterSpec:
        return adapter_spec_from_config(cfg.adapter, cfg.seed)

    def __init__(self, cfg: ServerConfig, model, rule: str | None = None):
        super().__init__(cfg, model)
        self.rule = rule or cfg.ranks.rule
        self.weighting: Weighting = cfg.ranks.weighting or self.default_weighting
        self.alpha = cfg.adapter.alpha
        self.r_max = cfg.adapter.rank
        state = model.state()
        self.pairs = lora_pairs(state)  # module path -> (A name, B name)
        if not self.pairs:
            raise ValueError(f"strategy {self.name}: the adapter has no LoRA layers")
        self.dims = {p: (state[a].shape[1], state[b].shape[0]) for p, (a, b) in self.pairs.items()}
        lora_names = {n for ab in self.pairs.values() for n in ab}
        self.others = {n: s for n, s in model.shapes().items() if n not in lora_names}
        self.products: dict[str, torch.Tensor] = {}  # FlexLoRA: exact dW per layer, once aggregated
        self._sent: dict[str, Ranks] = {}
        self._sums: dict[str, HetLoRASum | ProductSum] = {}
        self._rest: WeightedSum | None = None

    # ---------------------------------------------------------------- the journal
    def state(self) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
        """The adapter state plus FlexLoRA's exact products (float64), which the adapter holds
        only as their rank-r_max approximation: every later download is cut from them."""
        tensors, meta = super().state()
        tensors.update({PRODUCTS + path: dW for path, dW in self.products.items()})
        return tensors, meta

    def restore(self, tensors: dict[str, torch.Tensor], meta: dict[str, Any]) -> None:
        products, rest = split_prefixed(tensors, PRODUCTS)
        unknown = sorted(set(products) - set(self.pairs))
        if unknown:
            raise ValueError(f"strategy {self.name}: journaled product for unknown layer {unknown[0]!r}")
        self.products = dict(products)
        super().restore(rest, meta)

    # ---------------------------------------------------------------- for subclasses
    @abstractmethod
    def ranks_for(self, rnd: int, clients: list[ClientInfo]) -> dict[str, Ranks]:
        """Per client id: module path -> rank (0 or absent = no LoRA there)."""

    def extend_plan(self, rnd: int, client: ClientInfo, ranks: Ranks, plan: pb.Plan,
                    expected: dict[str, TensorSpec]) -> None:
        """Adds method-specific parts (regularisation, reports) to one client's plan."""

    def on_update(self, client: ClientInfo, update: dict[str, torch.Tensor], weight: float) -> None:
        """Sees the extra (non-adapter) tensors a client reported, e.g. importance scores."""

    # ---------------------------------------------------------------- the cut
    def layer_factors(self, path: str, rank: int) -> tuple[torch.Tensor, torch.Tensor]:
        """The global layer at ``rank`` in scaling ``alpha / rank``."""
        if self.rule == "flexlora" and path in self.products:
            return redistribute(self.products[path], rank, scaling(self.alpha, rank))
        a_name, b_name = self.pairs[path]
        A, B = self.model.parameter(a_name).detach().cpu(), self.model.parameter(b_name).detach().cpu()
        return truncate(A, B, scaling(self.alpha, self.r_max), rank, scaling(self.alpha, rank))

    def spec_for(self, ranks: Ranks) -> pb.AdapterSpec:
        spec = self.adapter_spec(self.cfg)
        spec.rank = max(ranks.values())
        for path in sorted(self.pairs):
            spec.ranks[path] = ranks.get(path, 0)
        return spec

    def configure(self, rnd: int, clients: list[ClientInfo]) -> dict[str, Instruction]:
        ranks = self.ranks_for(rnd, clients)
        self._sent = {}  # this round's clients only: the round record lists exactly them
        state = self.global_state()
        rest = {n: state[n] for n in self.others}
        cut: dict[tuple, tuple[dict[str, torch.Tensor], dict[str, TensorSpec]]] = {}
        out = {}
        for c in clients:
            r = {p: v for p, v in ranks[c.id].items() if v > 0}
            if not r:
                raise ValueError(f"strategy {self.name}: client {c.id} was given no LoRA layer")
            key = tuple(sorted(r.items()))
            if key not in cut:  # clients with the same ranks share one download blob
                tensors, expected = dict(rest), dict(self.others)
                for path, rank in r.items():
                    A, B = self.layer_factors(path, rank)
                    a_name, b_name = self.pairs[path]
                    tensors[a_name], tensors[b_name] = A, B
                    expected[a_name], expected[b_name] = (tuple(A.shape), A.dtype), (tuple(B.shape), B.dtype)
                cut[key] = (tensors, expected)
            tensors, expected = cut[key]
            plan = self.base_plan(rnd)
            plan.adapter.CopyFrom(self.spec_for(r))
            plan.train.append(".*")
            plan.upload.append(".*")
            expected = dict(expected)
            self.extend_plan(rnd, c, r, plan, expected)
            out[c.id] = Instruction(plan, tensors, expected)
            self._sent[c.id] = r
        self._sums = {}
        self._rest = WeightedSum()
        return out

    # ---------------------------------------------------------------- aggregation
    def fold(self, rnd: int, client: ClientInfo, update: dict[str, torch.Tensor], weight: float) -> None:
        assert self._rest is not None, "fold before configure"
        ranks = self._sent[client.id]
        for path, rank in ranks.items():
            a_name, b_name = self.pairs[path]
            acc = self._sums.get(path)
            if acc is None:
                acc = self._sums[path] = (ProductSum() if self.rule == "flexlora" else
                                          HetLoRASum(self.r_max, scaling(self.alpha, self.r_max), self.weighting))
            acc.add(update[a_name], update[b_name], scaling(self.alpha, rank), weight)
        self._rest.add({n: update[n] for n in self.others}, weight)
        self.on_update(client, update, weight)

    def aggregate(self, rnd: int) -> dict[str, Any]:
        assert self._rest is not None and len(self._rest) > 0, "aggregate with no updates"
        new: dict[str, torch.Tensor] = dict(self._rest.mean())
        s_max = scaling(self.alpha, self.r_max)
        for path, acc in self._sums.items():
            a_name, b_name = self.pairs[path]
            if isinstance(acc, ProductSum):
                dW = acc.result()
                if dW is None:
                    continue
                self.products[path] = dW
                new[a_name], new[b_name] = redistribute(dW, self.r_max, s_max)
            else:
                got = acc.result()
                if got is not None:
                    new[a_name], new[b_name] = got
        self.model.load_state(new)
        n = len(self._rest)
        self._rest, self._sums = None, {}
        return {"aggregated": float(n), "rule": self.rule,
                "client_ranks": {c: rank_summary(r) for c, r in sorted(self._sent.items())}}

    def discard(self, rnd: int) -> None:
        self._rest, self._sums = None, {}


def rank_summary(ranks: Ranks) -> dict[str, Any]:
    """Ranks for the log: the total and the per-layer list in layer order."""
    vals = [ranks[p] for p in sorted(ranks, key=layer_order)]
    return {"total": sum(vals), "layers": len(vals), "ranks": vals}


def layer_order(path: str) -> tuple:
    return tuple(int(t) if t.isdigit() else t for t in re.split(r"(\d+)", path))


def rank_from_memory(memory: int, top: int, r_min: int, r_max: int) -> int:
    """A client's rank from its memory relative to the best-provisioned client, rounded down
    to a power of two within [r_min, r_max]."""
    if memory <= 0 or top <= 0:
        return r_max
    r = r_max * memory / top
    return max(r_min, min(r_max, 2 ** int(math.floor(math.log2(max(r, 1))))))


class FixedRanks(RankedLoRA):
    """Each client at one rank of its own for the whole run, on every layer: from
    ``ranks.client_ranks`` (by id), from device memory (``ranks.source: memory``) or from
    ``ranks.cycle`` indexed by the client's partition (HetLoRA's and FlexLoRA's setting)."""

    rule_name: ClassVar[str]

    def __init__(self, cfg, model):
        super().__init__(cfg, model, rule=self.rule_name)

    def client_rank(self, client: ClientInfo, clients: list[ClientInfo]) -> int:
        rc = self.cfg.ranks
        if client.id in rc.client_ranks:
            return rc.client_ranks[client.id]
        if rc.source == "memory":
            top = max(c.profile.memory_bytes for c in clients)
            return rank_from_memory(client.profile.memory_bytes, top, rc.min_rank, self.r_max)
        cycle = rc.cycle or _halving(self.r_max, rc.min_rank)
        return cycle[max(client.partition, 0) % len(cycle)]

    def ranks_for(self, rnd: int, clients: list[ClientInfo]) -> dict[str, Ranks]:
        return {c.id: dict.fromkeys(self.pairs, self.client_rank(c, clients)) for c in clients}


def _halving(r_max: int, r_min: int) -> list[int]:
    """r_max, r_max/2, r_max/4, ... down to r_min."""
    out, r = [], r_max
    while r >= r_min:
        out.append(r)
        if r == r_min:
            break
        r = max(r_min, r // 2)
    return out
