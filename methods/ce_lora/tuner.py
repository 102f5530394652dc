"""Tri-matrix LoRA (CE-LoRA): ``y = W0 x + (alpha/r) B C A x`` with a small dense C (r x r).

Built on peft's LoRA: every LoRA layer gets ``lora_C`` (a ParameterDict, like peft's own
factors, so its saved name is ``<layer>.lora_C``) and a forward hook on ``lora_A`` that
multiplies A's output by C. Because ``B C A = B (C A)``, the adapter saves as a *standard*
PEFT LoRA adapter with ``A' = C A`` (:func:`merged_lora_state`), which
``PeftModel.from_pretrained`` loads like any other.
"""

from __future__ import annotations

import hashlib
import torch
from torch import nn

from fedlora.common.model import A_INIT, A_INIT_SEEDED, AdapterKind
from fedlora.methods.ce_lora.config import TriLoraOptions
from fedlora.proto.v1 import fedlora_pb2 as pb

KIND = "tri-lora"


def _seeded_normal(seed: int, name: str, shape: tuple[int, ...], std: float) -> torch.Tensor:
    digest = hashlib.sha256(f"{seed}/{name}".encode()).digest()
    g = torch.Generator().manual_seed(int.from_bytes(digest[:8], "little") >> 1)
    return torch.randn(shape, generator=g) * std


def attach_c(model: nn.Module, adapter: str = "default") -> int:
    """Adds C (identity) to every peft LoRA layer of ``model``; returns how many."""
    from peft.tuners.lora import LoraLayer

    count = 0
    for module in model.modules():
        if not isinstance(module, LoraLayer) or adapter not in module.lora_A:
            continue
        r = module.r[adapter]
        a = module.lora_A[adapter]
        module.lora_C = nn.ParameterDict({adapter: nn.Parameter(torch.eye(r, dtype=a.weight.dtype,
                                                                          device=a.weight.device))})

        def hook(_mod, _inp, out, layer=module):
            c = layer.lora_C[adapter]
            return out @ c.t().to(out.dtype)

        a.register_forward_hook(hook)
        count += 1
    return count


def init_b(params: dict[str, nn.Parameter], seed: int, std: float) -> None:
    """B from the run seed and each layer's name (small, non-zero)."""
    with torch.no_grad():
        for name, p in params.items():
            if ".lora_B." in name:
                p.copy_(_seeded_normal(seed, name, tuple(p.shape), std).to(p.dtype))


def merged_lora_state(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The standard LoRA state with C folded into A (``A' = C A``) and no C tensors."""
    out = {}
    for name, t in state.items():
        if name.endswith(".lora_C"):
            continue
        if ".lora_A." in name:
            c = state.get(name.split(".lora_A.")[0] + ".lora_C")
            if c is not None:
                t = (c.to(torch.float64) @ t.to(torch.float64)).to(t.dtype)
        out[name] = t
    return out


class TriLora(AdapterKind):
    """The ``tri-lora`` adapter kind: peft's LoRA plus C, saved as plain LoRA."""

    def attach(self, model: nn.Module, spec: pb.AdapterSpec) -> None:
        attach_c(model)

    def initialise(self, params: dict[str, nn.Parameter], spec: pb.AdapterSpec) -> None:
        init_b(params, spec.init_seed, TriLoraOptions.read(spec.options).b_init_std)

    def saved_state(self, state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        return merged_lora_state(state)


def write_options(spec: pb.AdapterSpec, b_init_std: float) -> None:
    """A and B both seeded (every client starts from the same, non-zero factors)."""
    spec.kind = KIND
    spec.options[A_INIT] = A_INIT_SEEDED
    TriLoraOptions(b_init_std=b_init_std).write(spec.options)
