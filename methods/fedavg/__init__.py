"""FedAvg (full fine-tuning): every trainable weight both ways, averaged with weights n_k."""

from fedlora.methods.base import Method
from fedlora.methods.fedavg.strategy import FedAvg

METHOD = Method(name=FedAvg.name, strategy=FedAvg)
