"""The federated methods, one package each (peft's ``tuners/<name>/`` layout), and their registry.

A package holds its config section(s), its server half (plans and aggregation), its client
half (hooks) and its adapter kind where it has one, and exports one :class:`Method` as
``METHOD``; the package is named for the method's ``--strategy`` name with ``_`` for ``-``.
Adding a method is a new package plus its name in :data:`PACKAGES`; nothing else in fedlora
names a method. Rules several methods share live in :mod:`fedlora.methods.rules`
(FedAvg's weighted sum, HetLoRA/FlexLoRA rank rules) and :mod:`fedlora.methods.ranked`.
"""

from __future__ import annotations

import importlib
from functools import cache
from typing import TYPE_CHECKING

from fedlora.methods.base import Method, PlanOptions

if TYPE_CHECKING:
    from pydantic import BaseModel

    from fedlora.common.model import AdapterKind

DEFAULT = "fedavg-lora"  # the strategy when the config names none: the baseline
PACKAGES = ("fedavg_lora", "fedavg", "ffa_lora", "ce_lora", "hetlora", "flexlora", "sa_fedlora",
            "legend", "flora")


@cache
def methods() -> dict[str, Method]:
    """Strategy name -> method, in registration order (imported on first use: the config
    module asks for sections, and the packages import the config module)."""
    out: dict[str, Method] = {}
    for pkg in PACKAGES:
        m: Method = importlib.import_module(f"fedlora.methods.{pkg}").METHOD
        if m.name != _name(pkg):
            raise RuntimeError(f"package methods/{pkg} registers {m.name!r}, not {_name(pkg)!r}")
        out[m.name] = m
    return out


def names() -> list[str]:
    """The strategy names, without importing any method (for help texts)."""
    return [_name(p) for p in PACKAGES]


def _name(pkg: str) -> str:
    return pkg.replace("_", "-")


def get(name: str) -> Method:
    if name not in names():
        raise ValueError(f"strategy: unknown {name!r} (known: {', '.join(sorted(names()))})")
    return methods()[name]


def config_sections() -> dict[str, type["BaseModel"]]:
    """Every method's config sections by key (a shared section, such as ``ranks``, once)."""
    out: dict[str, type[BaseModel]] = {}
    for m in methods().values():
        for key, model in m.sections.items():
            if out.setdefault(key, model) is not model:
                raise RuntimeError(f"config section {key!r} is defined by two methods differently")
    return out


def adapter_kind(kind: str) -> "AdapterKind":
    for m in methods().values():
        if kind in m.adapter_kinds:
            return m.adapter_kinds[kind]
    raise ValueError(f"adapter kind {kind!r} is not supported by this version")


__all__ = ["DEFAULT", "Method", "PACKAGES", "PlanOptions", "adapter_kind", "config_sections", "get", "methods", "names"]
