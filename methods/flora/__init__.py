"""FLoRA (stacking): clients' A stacked and B concatenated, merged into the base every round."""

from fedlora.methods.base import Method
from fedlora.methods.flora.client import FLoRAClient
from fedlora.methods.flora.strategy import FLoRA

METHOD = Method(name=FLoRA.name, strategy=FLoRA, client=FLoRAClient)
