"""CE-LoRA (arXiv 2503.23869): tri-matrix adapters, only C on the wire, personalised C per client."""

from fedlora.methods.base import Method
from fedlora.methods.ce_lora.client import CELoRAClient
from fedlora.common.tasks import get_task
from fedlora.methods.ce_lora.config import CELoRAConfig, resolve_data_stats
from fedlora.methods.ce_lora.strategy import CELoRA
from fedlora.methods.ce_lora.tuner import KIND, TriLora

METHOD = Method(
    name=CELoRA.name, strategy=CELoRA, client=CELoRAClient, sections={"ce_lora": CELoRAConfig},
    adapter_kinds={KIND: TriLora()},
    no_dp="its C sits in a forward hook opacus cannot see",
    check=lambda cfg: resolve_data_stats(cfg.ce_lora, get_task(cfg.task).has_classes))
