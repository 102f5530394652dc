"""FLoRA (stacking): the merge is exactly sum_k p_k s_k B_k A_k, both ends hold the same base,
and the final adapter is the whole stack."""

from __future__ import annotations

import json

import pytest
import torch

from fedlora.common.config import ServerConfig
from fedlora.common.model import AdaptedModel, load_tokenizer, lora_pairs
from fedlora.common.tasks import get_task
from fedlora.methods.flora.client import FLoRAClient
from fedlora.methods.flora.merge import STACK_PREFIX, base_weights
from fedlora.methods.flora.strategy import FLoRA
from fedlora.proto.v1 import fedlora_pb2 as pb
from fedlora.server.strategy import ClientInfo

RANK, ALPHA, LABELS = 4, 8.0, 6
TASK = get_task("classification")
load_base = TASK.load_base


def _strategy(tiny_model) -> FLoRA:
    cfg = ServerConfig(model=str(tiny_model), strategy="flora", adapter={"rank": RANK, "alpha": ALPHA})
    return FLoRA(cfg, AdaptedModel(load_base(str(tiny_model), LABELS, cfg.seed), FLoRA.adapter_spec(cfg),
                                  TASK.peft_task_type))


def _updates(strategy: FLoRA, seed: int) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {n: torch.randn(s, generator=g) * 0.1 for n, (s, _) in strategy.model.shapes().items()}


def _round(strategy: FLoRA, rnd: int, weights: dict[str, float]) -> dict[str, dict[str, torch.Tensor]]:
    clients = [ClientInfo(c, i, int(w), pb.DeviceProfile()) for i, (c, w) in enumerate(weights.items())]
    strategy.configure(rnd, clients)
    ups = {c.id: _updates(strategy, 100 * rnd + c.partition) for c in clients}
    for c in clients:
        strategy.fold(rnd, c, ups[c.id], weights[c.id])
    strategy.aggregate(rnd)
    return ups


def test_merged_base_is_w0_plus_the_weighted_sum_of_every_clients_product(tiny_model):
    s = _strategy(tiny_model)
    w0 = {p: w.detach().clone().double() for p, w in base_weights(s.model).items()}
    expected = {p: w.clone() for p, w in w0.items()}
    for rnd, weights in ((1, {"a": 10.0, "b": 30.0, "c": 60.0}), (2, {"a": 5.0, "b": 5.0})):
        ups = _round(s, rnd, weights)
        total = sum(weights.values())
        for path, (a, b) in lora_pairs(s.model.names()).items():
            expected[path] += sum((weights[c] / total) * (ALPHA / RANK) * ups[c][b].double() @ ups[c][a].double()
                                  for c in weights)
    for path, w in base_weights(s.model).items():
        torch.testing.assert_close(w.double(), expected[path], rtol=0, atol=1e-6)
        assert s.stacks[path][0].shape[0] == (3 + 2) * RANK  # the stack's rank: sum of ranks


def test_each_round_starts_a_fresh_lora_with_zero_b(tiny_model):
    s = _strategy(tiny_model)
    a_before = {a: s.model.parameter(a).detach().clone() for a, _ in lora_pairs(s.model.names()).values()}
    _round(s, 1, {"a": 1.0, "b": 1.0})
    for a, b in lora_pairs(s.model.names()).values():
        assert not torch.equal(s.model.parameter(a).detach(), a_before[a])
        assert not s.model.parameter(b).detach().any()


def _second_round_download(s: FLoRA) -> dict[str, torch.Tensor]:
    """Client a's round-2 download, round 1's stack in it."""
    _round(s, 1, {"a": 2.0, "b": 3.0})
    return s.configure(2, [ClientInfo("a", 0, 2, pb.DeviceProfile())])["a"].tensors


def _client_model(s: FLoRA, tiny_model) -> AdaptedModel:
    return AdaptedModel(load_base(str(tiny_model), LABELS, s.cfg.seed), FLoRA.adapter_spec(s.cfg),
                        TASK.peft_task_type)


def test_a_client_merging_the_download_holds_the_coordinators_base_bit_for_bit(tiny_model):
    s = _strategy(tiny_model)
    download = _second_round_download(s)
    assert any(n.startswith(STACK_PREFIX) for n in download)
    client_model = _client_model(s, tiny_model)
    hooks = FLoRAClient(None)  # the merge needs no run context
    rest = hooks.on_global_state(pb.Plan(), client_model, download)
    assert not any(n.startswith(STACK_PREFIX) for n in rest)
    client_model.load_state(rest)
    for path, w in base_weights(client_model).items():
        assert torch.equal(w, base_weights(s.model)[path])


def test_the_saved_adapter_is_the_stack_and_reproduces_the_coordinators_model(tiny_model, tmp_path):
    from peft import PeftModel

    s = _strategy(tiny_model)
    _round(s, 1, {"a": 1.0, "b": 3.0})
    s.save_adapter(tmp_path / "adapter")
    config = json.loads((tmp_path / "adapter" / "adapter_config.json").read_text())
    assert config["r"] == config["lora_alpha"] == 2 * RANK
    tok = load_tokenizer(str(tiny_model))
    enc = tok(["what is the capital of france ?", "who wrote it ?"], return_tensors="pt", padding=True)
    s.model.model.eval()
    loaded = PeftModel.from_pretrained(load_base(str(tiny_model), LABELS, 99), str(tmp_path / "adapter")).eval()
    with torch.no_grad():
        torch.testing.assert_close(loaded(**enc).logits, s.model.model(**enc).logits, rtol=1e-4, atol=1e-5)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_a_client_on_a_gpu_merges_the_cpu_download_to_the_coordinators_bits(tiny_model):
    # Seen on an H100 before the fix: every FLoRA client on CUDA died in round 2 ("Expected all
    # tensors to be on the same device ... cuda:0 and cpu") and the run stalled.
    s = _strategy(tiny_model)
    download = _second_round_download(s)
    client_model = _client_model(s, tiny_model)
    client_model.model.to("cuda")
    FLoRAClient(None).on_global_state(pb.Plan(), client_model, download)
    for path, w in base_weights(client_model).items():
        assert w.device.type == "cuda"
        assert torch.equal(w.cpu(), base_weights(s.model)[path])
