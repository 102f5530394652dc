"""FlexLoRA: per-client ranks, mixed ranks combined with the FlexLoRA rule."""

from fedlora.methods.base import Method
from fedlora.methods.flexlora.strategy import FlexLoRA
from fedlora.methods.ranked import RanksConfig

METHOD = Method(name=FlexLoRA.name, strategy=FlexLoRA, sections={"ranks": RanksConfig})
