"""FedAvg-LoRA (FedIT): one shared rank, A and B averaged separately."""

from fedlora.methods.base import Method
from fedlora.methods.fedavg_lora.strategy import FedAvgLoRA

METHOD = Method(name=FedAvgLoRA.name, strategy=FedAvgLoRA)
