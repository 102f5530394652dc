"""FLoRA (stacking): an exact aggregate of heterogeneous LoRA updates by stacking, not averaging.

Each round every client trains a fresh LoRA (A drawn anew from the run seed and the round, B
zero: the same start everywhere). The coordinator stacks what comes back,
``A_g = [p_1 s_1 A_1; ...; p_K s_K A_K]`` and ``B_g = [B_1 ... B_K]`` (``s_k = alpha / r_k``),
so ``B_g A_g = sum_k p_k s_k B_k A_k`` exactly, and merges it into the base weights. The
stacks of all rounds travel with every download (``fedlora.flora.<layer>.A/B``); the client
merges them into its own base before training (client.py). Download therefore grows with the
sum of ranks over clients and rounds: FLoRA's price for exactness (methods.md).

The final adapter is the whole stack as one standard PEFT LoRA adapter of rank R (the stack's
rows) with ``lora_alpha = R`` (scaling 1), so ``PeftModel.from_pretrained`` on the untouched
base gives the coordinator's model.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any, ClassVar

import torch

from fedlora.common.config import ServerConfig
from fedlora.common.model import adapter_spec_from_config, lora_pairs, seeded_lora_a
from fedlora.methods.flora.merge import BaseMerger, stack_names
from fedlora.methods.rules import WeightedSum, scaling
from fedlora.proto.v1 import fedlora_pb2 as pb
from fedlora.server.strategy import ClientInfo, Instruction, Strategy, split_prefixed


STACKS = "stacks/"  # journaled stacks: stacks/<module path>/A and /B


class FLoRA(Strategy):
    name: ClassVar[str] = "flora"

    @classmethod
    def adapter_spec(cls, cfg: ServerConfig) -> pb.AdapterSpec:
        return adapter_spec_from_config(cfg.adapter, cfg.seed)

    def __init__(self, cfg: ServerConfig, model) -> None:
        super().__init__(cfg, model)
        self.pairs = lora_pairs(model.names())
        if not self.pairs:
            raise ValueError("strategy flora: the adapter has no LoRA layers")
        lora = {n for ab in self.pairs.values() for n in ab}
        self.others = [n for n in model.names() if n not in lora]  # modules to save: averaged
        self.merger = BaseMerger(model)
        self.stacks: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}  # path -> (A, B), scaling 1
        self._fresh(0)
        # client id -> (its LoRA factors, weight); stacked in client-id order, not arrival
        # order, so a redone round (retry, resume) stacks the same rows in the same place
        self._round: dict[str, tuple[dict[str, torch.Tensor], float]] = {}
        self._rest: WeightedSum | None = None

    def _fresh(self, rnd: int) -> None:
        """A new LoRA for round ``rnd + 1``: A seeded by the run seed, the round and the name;
        B zero, so the model equals its merged base."""
        state = {}
        for a_name, b_name in self.pairs.values():
            a = self.model.parameter(a_name)
            state[a_name] = seeded_lora_a(self.cfg.seed, f"{a_name}/round-{rnd + 1}", tuple(a.shape))
            state[b_name] = torch.zeros_like(self.model.parameter(b_name), device="cpu")
        self.model.load_state(state)

    def configure(self, rnd: int, clients: list[ClientInfo]) -> dict[str, Instruction]:
        tensors = self.global_state()
        for path, (A, B) in self.stacks.items():
            a_name, b_name = stack_names(path)
            tensors[a_name], tensors[b_name] = A, B
        self._round, self._rest = {}, WeightedSum()
        return self.same_plan(rnd, clients, tensors, self.model.shapes())

    def fold(self, rnd: int, client: ClientInfo, update: dict[str, torch.Tensor], weight: float) -> None:
        assert self._rest is not None, "fold before configure"
        lora = {n: update[n] for ab in self.pairs.values() for n in ab}
        self._round[client.id] = (lora, weight)  # the stack needs every client's factors
        self._rest.add({n: update[n] for n in self.others}, weight)

    def aggregate(self, rnd: int) -> dict[str, Any]:
        assert self._round and self._rest is not None, "aggregate with no updates"
        factors = [self._round[cid] for cid in sorted(self._round)]
        total = sum(w for _, w in factors)
        alpha = self.cfg.adapter.alpha
        for path, (a_name, b_name) in self.pairs.items():
            new_a = [(w / total) * scaling(alpha, f[a_name].shape[0]) * f[a_name].double()
                     for f, w in factors]
            new_b = [f[b_name].double() for f, _ in factors]
            A, B = stacked(self.stacks.get(path), new_a, new_b)
            self.stacks[path] = (A, B)
        self.merger.set(self.stacks)
        self.model.load_state(self._rest.mean())
        self._fresh(rnd)
        n = len(self._round)
        self._round, self._rest = {}, None
        ranks = {A.shape[0] for A, _ in self.stacks.values()}
        return {"aggregated": float(n), "stack_rank": float(max(ranks))}

    def discard(self, rnd: int) -> None:
        self._round, self._rest = {}, None

    def moving_tensors(self) -> list[torch.Tensor]:
        """The base weights under each LoRA layer: :meth:`aggregate` merges the stack into them."""
        return list(self.merger.weights.values())

    def state(self) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
        """The adapter (next round's fresh LoRA and the averaged modules to save) and the
        stacks; the merged base weights are not saved: :meth:`restore` rebuilds them from W0
        and the stacks with the same :class:`BaseMerger` every round uses."""
        tensors, meta = super().state()
        for path, (A, B) in self.stacks.items():
            tensors[f"{STACKS}{path}/A"], tensors[f"{STACKS}{path}/B"] = A, B
        return tensors, meta

    def restore(self, tensors: dict[str, torch.Tensor], meta: dict[str, Any]) -> None:
        own, rest = split_prefixed(tensors, STACKS)
        paths = {name.rsplit("/", 1)[0] for name in own}
        unknown = sorted(paths - set(self.pairs))
        if unknown:
            raise ValueError(f"strategy flora: journaled stack for unknown layer {unknown[0]!r}")
        self.stacks = {path: (own[f"{path}/A"], own[f"{path}/B"]) for path in sorted(paths)}
        self.merger.set(self.stacks)
        super().restore(rest, meta)

    def save_adapter(self, folder: Path) -> None:
        """The stack as a standard PEFT LoRA adapter: rank R, alpha R (scaling 1)."""
        from safetensors.torch import save_file

        folder.mkdir(parents=True, exist_ok=True)
        rank = max(A.shape[0] for A, _ in self.stacks.values())
        config = copy.deepcopy(self.model.model.peft_config["default"])
        config.r, config.lora_alpha = rank, rank
        config.rank_pattern, config.alpha_pattern = {}, {}
        config.save_pretrained(str(folder))
        state = {n: t for n, t in self.model.state().items() if n in self.others}
        for path, (a_name, b_name) in self.pairs.items():
            A, B = self.stacks[path]
            state[a_name], state[b_name] = A, B
        save_file({k: v.contiguous() for k, v in state.items()},
                  str(folder / "adapter_model.safetensors"), metadata={"format": "pt"})


def stacked(prev: tuple[torch.Tensor, torch.Tensor] | None, new_a: list[torch.Tensor],
            new_b: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """The stack with one round's factors appended: A row-wise, B column-wise (float32)."""
    a = ([prev[0].double()] if prev else []) + new_a
    b = ([prev[1].double()] if prev else []) + new_b
    return torch.cat(a).float().contiguous(), torch.cat(b, dim=1).float().contiguous()
