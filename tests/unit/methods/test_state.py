"""Every method's journaled state: a strategy restored from what the original journaled after
round 1 plans and aggregates round 2 exactly as the original does."""

from __future__ import annotations

import pytest
import torch

from fedlora import methods
from fedlora.proto.v1 import fedlora_pb2 as pb
from fedlora.server.journal import Journal
from fedlora.server.strategy import ClientInfo, Strategy
from strategies import build_strategy, seeded_update

SECTIONS = {
    # annealing from round 1 on, so the ranks SA-FedLoRA keeps change after it
    "sa-fedlora": {"sa_fedlora": {"initiating_rounds": 0, "heating_rounds": 0, "cooling_rounds": 2,
                                  "final_rank": 1.0}},
    "hetlora": {"ranks": {"cycle": [4, 2]}},
    "flexlora": {"ranks": {"cycle": [4, 2]}},
}


def _profile(i: int) -> pb.DeviceProfile:
    p = pb.DeviceProfile(memory_bytes=(i + 1) << 30, num_examples=10 * (i + 1),
                         upload_bytes_per_second=1e6 * (i + 1), download_bytes_per_second=4e6)
    p.layer_seconds.update({"fwd.0": 0.01 * (i + 1), "bwd.0": 0.02 * (i + 1), "fwd.1": 0.01,
                            "bwd.1": 0.02, "batch": 8.0, "step": 0.06})
    return p


CLIENTS = [ClientInfo(f"client-{i}", i, 10 * (i + 1), _profile(i)) for i in range(3)]


def _strategy(name: str, tiny_model, tmp_path) -> Strategy:
    return build_strategy(name, tiny_model, tmp_path, **SECTIONS.get(name, {}))


def _play(s: Strategy, rnd: int) -> tuple[dict, dict]:
    """One round with seeded updates of exactly the planned shapes; the plans and the metrics."""
    inst = s.configure(rnd, CLIENTS)
    for c in CLIENTS:
        s.fold(rnd, c, seeded_update(inst[c.id].expected, 100 * rnd + c.partition), float(c.num_examples))
    return inst, s.aggregate(rnd)


def _same(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) and a[k].dtype == b[k].dtype for k in a)


@pytest.mark.parametrize("name", methods.names())
def test_a_restored_strategy_plays_the_next_round_as_the_original(name, tiny_model, tmp_path):
    original = _strategy(name, tiny_model, tmp_path)
    _play(original, 1)
    journal = Journal(tmp_path)
    journal.open(original.cfg)
    entry = journal.commit(1, *original.state(), (0, 0))  # through the files a resume reads

    restored = _strategy(name, tiny_model, tmp_path)
    restored.restore(journal.state(entry), entry.meta)
    assert _same(restored.state()[0], original.state()[0])
    assert restored.state()[1] == original.state()[1]

    inst_a, metrics_a = _play(original, 2)
    inst_b, metrics_b = _play(restored, 2)
    for cid in inst_a:
        a, b = inst_a[cid], inst_b[cid]
        assert a.plan.SerializeToString(deterministic=True) == b.plan.SerializeToString(deterministic=True)
        assert _same(a.tensors, b.tensors) and a.expected == b.expected
    assert metrics_a == metrics_b
    assert _same(restored.state()[0], original.state()[0])
    assert _same(restored.model.state(), original.model.state())
    if name == "flora":  # the merged base weights are rebuilt from the stacks
        from fedlora.methods.flora.merge import base_weights
        wa, wb = base_weights(original.model), base_weights(restored.model)
        assert all(torch.equal(wa[p], wb[p]) for p in wa)


def test_the_state_beyond_the_adapter_is_journaled(tiny_model, tmp_path):
    """What each stateful method keeps besides the adapter is really in its state."""
    kept = {"flexlora": "products/", "flora": "stacks/", "ce-lora": "personal/"}
    for name, prefix in kept.items():
        s = _strategy(name, tiny_model, tmp_path)
        _play(s, 1)
        assert any(n.startswith(prefix) for n in s.state()[0]), name
    sa = _strategy("sa-fedlora", tiny_model, tmp_path)
    _play(sa, 1)
    ranks = sa.state()[1]["layer_ranks"]
    assert sum(ranks.values()) < 4 * len(ranks)  # annealed: fewer than r_max everywhere
    assert {n for n in sa.state()[0] if n.startswith("importance/")} == {"importance/" + p for p in ranks}
