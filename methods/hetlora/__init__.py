"""HetLoRA: per-client ranks, mixed ranks combined with the HetLoRA rule."""

from fedlora.methods.base import Method
from fedlora.methods.hetlora.strategy import HetLoRA
from fedlora.methods.ranked import RanksConfig

METHOD = Method(name=HetLoRA.name, strategy=HetLoRA, sections={"ranks": RanksConfig})
