"""CE-LoRA (arXiv 2503.23869): tri-matrix adapters, only C crosses the wire, personalised
aggregation.

Each client keeps its own A, B and classifier head (``keep_local``: they persist in its state
folder across rounds and restarts) and sends only C (r x r per adapted layer) plus
privacy-light data statistics: per-class mean [CLS] embeddings of the *base* model and class
counts, or on a task without classes one mean prompt embedding and the example count
(``ce_lora.data_stats``), optionally noised on the client. The coordinator scores every pair of
clients by data similarity (count-weighted cosine of the class means) and parameter similarity (cosine of the
flattened Cs), ``sim = lam * s_data + (1 - lam) * s_param``, turns each row into weights
``w_k = softmax(sim_k / tau)`` and sends client k its own ``C_k = sum_j w_kj C_j``.

The coordinator keeps every participant's C until the round is committed (r^2 x layers floats
each: the personalisation needs all pairs), not only a running sum.
Global accuracy is measured by the clients (each personal model on the run's test split),
since the coordinator holds none of their A, B or heads; see docs/methods.md.
"""

from __future__ import annotations

import math
from typing import Any, ClassVar

import torch

from fedlora.common.config import ServerConfig
from fedlora.common.model import adapter_spec_from_config
from fedlora.methods.ce_lora import tuner
from fedlora.common.tasks import get_task
from fedlora.methods.ce_lora.config import StatsOptions, resolve_data_stats
from fedlora.methods.ce_lora.stats import STATS_COUNT, STATS_MEAN, stats_groups
from fedlora.proto.v1 import fedlora_pb2 as pb
from fedlora.common.wire.protocol import REPORT_TEST_ACCURACY
from fedlora.server.strategy import ClientInfo, Instruction, Strategy, split_prefixed

C_NAME = r"\.lora_C$"
PERSONAL = "personal/"  # journaled personal Cs: personal/<client id>/<C name>


def _cos(a: torch.Tensor, b: torch.Tensor) -> float:
    na, nb = float(a.norm()), float(b.norm())
    return float(a @ b) / (na * nb) if na > 0 and nb > 0 else 0.0


def data_similarity(mean_a: torch.Tensor, count_a: torch.Tensor, mean_b: torch.Tensor,
                    count_b: torch.Tensor) -> float:
    """Cosine of the class means, weighted by n_a,c x n_b,c over the classes both clients hold."""
    num = den = 0.0
    for c in range(mean_a.shape[0]):
        w = float(count_a[c]) * float(count_b[c])
        if w > 0:
            num += w * _cos(mean_a[c].double(), mean_b[c].double())
            den += w
    return num / den if den > 0 else 0.0


def personal_weights(stats: dict[str, tuple[torch.Tensor, torch.Tensor]],
                     cs: dict[str, dict[str, torch.Tensor]], lam: float, tau: float,
                     sent: dict[str, dict[str, torch.Tensor]] | None = None) -> dict[str, dict[str, float]]:
    """Row-softmax of ``lam * s_data + (1 - lam) * s_param`` over the round's clients.

    ``s_param`` is the cosine of the flattened Cs, or, given ``sent`` (what each client
    received), of the changes ``C_k - sent_k`` the clients made this round.
    """
    ids = sorted(cs)

    def vec(k: str) -> torch.Tensor:
        names = sorted(cs[k])
        v = torch.cat([cs[k][n].double().reshape(-1) for n in names])
        if sent is not None:
            v = v - torch.cat([sent[k][n].double().reshape(-1) for n in names])
        return v

    flat = {k: vec(k) for k in ids}
    out = {}
    for k in ids:
        sims = {}
        for j in ids:
            s_data = data_similarity(*stats[k], *stats[j])
            s_param = _cos(flat[k], flat[j])
            sims[j] = lam * s_data + (1 - lam) * s_param
        top = max(sims.values())
        exps = {j: math.exp((s - top) / tau) for j, s in sims.items()}
        z = sum(exps.values())
        out[k] = {j: e / z for j, e in exps.items()}
    return out


class CELoRA(Strategy):
    name: ClassVar[str] = "ce-lora"
    server_evaluates: ClassVar[bool] = False

    @classmethod
    def adapter_spec(cls, cfg: ServerConfig) -> pb.AdapterSpec:
        spec = adapter_spec_from_config(cfg.adapter, cfg.seed)
        tuner.write_options(spec, cfg.ce_lora.b_init_std)
        return spec

    def __init__(self, cfg, model):
        super().__init__(cfg, model)
        state = model.state()
        self._initial_c = {n: t for n, t in state.items() if n.endswith(".lora_C")}
        self.personal: dict[str, dict[str, torch.Tensor]] = {}
        self._round: dict[str, tuple[dict[str, torch.Tensor], torch.Tensor, torch.Tensor, float]] = {}
        self.last_weights: dict[str, dict[str, float]] = {}
        hidden = model.model.config.hidden_size
        self._data_stats = resolve_data_stats(cfg.ce_lora, get_task(cfg.task).has_classes)
        labels = stats_groups(self._data_stats, model.model.config.num_labels)
        self._stats_shapes = {STATS_MEAN: ((labels, hidden), torch.float32),
                              STATS_COUNT: ((labels,), torch.float32)}

    def configure(self, rnd: int, clients: list[ClientInfo]) -> dict[str, Instruction]:
        expected = {n: s for n, s in self.model.shapes().items() if n.endswith(".lora_C")}
        expected.update(self._stats_shapes)
        out = {}
        for c in clients:
            plan = self.base_plan(rnd)
            plan.upload_kind = "weights"  # C is r x r: nothing to gain from a delta
            plan.train.append(".*")
            if self.cfg.ce_lora.freeze_ab:
                plan.freeze.extend([r"\.lora_A\.", r"\.lora_B\."])
            plan.keep_local.extend([r"\.lora_A\.", r"\.lora_B\.", r"\.classifier\."])
            plan.upload.append(C_NAME)
            plan.report.append(REPORT_TEST_ACCURACY)
            StatsOptions(stats_noise=self.cfg.ce_lora.stats_noise,
                         data_stats=self._data_stats).write(plan.options)
            out[c.id] = Instruction(plan, self.personal.get(c.id, self._initial_c), expected)
        self._round = {}
        return out

    def fold(self, rnd: int, client: ClientInfo, update: dict[str, torch.Tensor], weight: float) -> None:
        cs = {n: t for n, t in update.items() if n.endswith(".lora_C")}
        self._round[client.id] = (cs, update[STATS_MEAN], update[STATS_COUNT], weight)

    def aggregate(self, rnd: int) -> dict[str, float]:
        assert self._round, "aggregate with no updates"
        cs = {k: v[0] for k, v in self._round.items()}
        stats = {k: (v[1], v[2]) for k, v in self._round.items()}
        sent = ({k: self.personal.get(k, self._initial_c) for k in cs}
                if self.cfg.ce_lora.param_similarity == "update" else None)
        w = personal_weights(stats, cs, self.cfg.ce_lora.lam, self.cfg.ce_lora.tau, sent)
        for k, row in w.items():
            self.personal[k] = {n: sum(row[j] * cs[j][n].double() for j in row).to(cs[k][n].dtype)
                                for n in cs[k]}
        total = sum(v[3] for v in self._round.values())
        mean_c = {n: sum(v[3] * v[0][n].double() for v in self._round.values()) / total
                  for n in next(iter(cs.values()))}
        self.model.load_state({n: t.float() for n, t in mean_c.items()})  # the n_k-weighted mean C
        self.last_weights = w
        c_floats = sum(t.numel() for t in next(iter(cs.values())).values())
        self._round = {}
        return {"aggregated": float(len(cs)), "c_floats_per_client": float(c_floats),
                "weights": w}

    def discard(self, rnd: int) -> None:
        self._round = {}

    def personal_state(self) -> dict[str, dict[str, torch.Tensor]]:
        return self.personal

    def state(self) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
        """The mean C (the adapter state) and every client's personal C, which is what its
        next download is; the class statistics live within one round. A, B and the heads
        are the clients' (their round-keyed state folders, client/roundstate.py)."""
        tensors, meta = super().state()
        for cid, cs in self.personal.items():
            tensors.update({f"{PERSONAL}{cid}/{name}": t for name, t in cs.items()})
        return tensors, meta

    def restore(self, tensors: dict[str, torch.Tensor], meta: dict[str, Any]) -> None:
        own, rest = split_prefixed(tensors, PERSONAL)
        personal: dict[str, dict[str, torch.Tensor]] = {}
        for key, t in own.items():
            cid, name = key.split("/", 1)  # ids are [A-Za-z0-9_.-]+: no slash
            personal.setdefault(cid, {})[name] = t
        super().restore(rest, meta)
        self.personal = personal
