"""LEGEND (arXiv 2412.20004): per-device LoRA depth and ranks growing towards the output."""

from fedlora.methods.base import Method
from fedlora.methods.legend.client import LegendClient
from fedlora.methods.legend.config import LegendConfig
from fedlora.methods.legend.strategy import Legend
from fedlora.methods.ranked import RanksConfig

METHOD = Method(name=Legend.name, strategy=Legend, client=LegendClient,
                sections={"legend": LegendConfig, "ranks": RanksConfig})
