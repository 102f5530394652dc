"""FFA-LoRA (Sun et al., ICLR 2024): A frozen and seeded, only B trained and sent."""

from fedlora.methods.base import Method
from fedlora.methods.ffa_lora.client import FFALoRAClient
from fedlora.methods.ffa_lora.strategy import FFALoRA

METHOD = Method(name=FFALoRA.name, strategy=FFALoRA, client=FFALoRAClient)
