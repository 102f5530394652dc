"""SA-FedLoRA (arXiv 2405.09394): a proximal initiating stage, then an annealed rank budget."""

from fedlora.methods.base import Method
from fedlora.methods.ranked import RanksConfig
from fedlora.methods.sa_fedlora.client import SAFedLoRAClient
from fedlora.methods.sa_fedlora.config import SAFedLoRAConfig
from fedlora.methods.sa_fedlora.strategy import SAFedLoRA

METHOD = Method(
    name=SAFedLoRA.name, strategy=SAFedLoRA, client=SAFedLoRAClient,
    sections={"sa_fedlora": SAFedLoRAConfig, "ranks": RanksConfig},
    no_dp="its proximal term and importance scores need plain gradients")
