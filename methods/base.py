"""What a method is to the rest of fedlora: one :class:`Method` record per package.

The registry (:mod:`fedlora.methods`) maps a ``--strategy`` name to its record. Everything a
method adds lives behind it: its server half (a :class:`~fedlora.server.strategy.Strategy`),
its client half (:class:`~fedlora.client.hooks.ClientHooks`), its config sections, its
adapter kind where it has one, and the plan options it sends to its own client half
(:class:`PlanOptions`), so every default exists once, in the method's config.
"""

from __future__ import annotations

import json
from collections.abc import Callable, MutableMapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar, Mapping, TypeVar

from pydantic import BaseModel, ConfigDict, ValidationError

from fedlora.client.hooks import ClientHooks

if TYPE_CHECKING:
    from fedlora.common.model import AdapterKind
    from fedlora.server.strategy import Strategy

P = TypeVar("P", bound="PlanOptions")


@dataclass(frozen=True)
class Method:
    name: str                                        # the --strategy value
    strategy: type["Strategy"]                       # server half: plans and aggregation
    client: type[ClientHooks] = ClientHooks          # client half: hooks in the client loop
    sections: Mapping[str, type[BaseModel]] = field(default_factory=dict)  # config key -> model
    adapter_kinds: Mapping[str, "AdapterKind"] = field(default_factory=dict)
    # why DP-SGD cannot run with this method ("" = it can); checked when the config loads
    no_dp: str = ""
    # extra cross-field checks of the whole ServerConfig when this method is chosen
    check: Callable[[Any], None] | None = None


class PlanOptions(BaseModel):
    """Options a method's server half writes into ``Plan.options`` (or ``AdapterSpec.options``)
    and its client half reads back: one pydantic model, so the field list and its types exist
    once. Keys are ``<prefix>.<field>``, values JSON; reading refuses a plan that lacks one."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    prefix: ClassVar[str]

    def write(self, options: MutableMapping[str, str]) -> None:
        for key, value in self.model_dump(mode="json").items():
            options[f"{self.prefix}.{key}"] = json.dumps(value)

    @classmethod
    def read(cls: type[P], options: Mapping[str, str]) -> P:
        raw: dict[str, Any] = {}
        for key in cls.model_fields:
            full = f"{cls.prefix}.{key}"
            if full not in options:
                raise ValueError(f"plan options lack {full!r}: coordinator and client versions differ")
            raw[key] = json.loads(options[full])
        try:
            return cls.model_validate(raw)
        except ValidationError as e:
            raise ValueError(f"plan options {cls.prefix}.*: {e}") from None
