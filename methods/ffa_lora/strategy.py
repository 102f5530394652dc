"""FFA-LoRA (Sun et al., ICLR 2024): A frozen and identical everywhere, only B trained and sent.

A is drawn from the run seed and each layer's name (``a_init: seeded``), so it never crosses
the wire: a client regenerates it, and the coordinator compares a digest of it at join and
refuses a client whose A differs. B starts at zero; the server averages B (and the classifier
head) with weights n_k. Aggregation is exact, because B A is linear in B.
"""

from __future__ import annotations

from typing import ClassVar

from fedlora.common.config import ServerConfig
from fedlora.common.model import A_INIT, A_INIT_SEEDED
from fedlora.methods.ffa_lora.digest import PROFILE_KEY, lora_a_digest
from fedlora.proto.v1 import fedlora_pb2 as pb
from fedlora.methods.fedavg_lora.strategy import FedAvgLoRA
from fedlora.methods.rules import WeightedSum
from fedlora.server.strategy import ClientInfo, Instruction

FROZEN = r"\.lora_A\."
SHIPPED = r"^(?!.*\.lora_A\.)"  # everything but A: B and the modules to save


class FFALoRA(FedAvgLoRA):
    name: ClassVar[str] = "ffa-lora"

    @classmethod
    def adapter_spec(cls, cfg: ServerConfig) -> pb.AdapterSpec:
        spec = super().adapter_spec(cfg)
        spec.options[A_INIT] = A_INIT_SEEDED
        return spec

    def admit(self, client: ClientInfo) -> str | None:
        theirs = client.profile.extra.get(PROFILE_KEY, "")
        ours = lora_a_digest(self.model.state())
        if theirs != ours:
            return (f"its frozen LoRA A (digest {theirs[:12] or 'missing'}) differs from the "
                    f"coordinator's ({ours[:12]}): same seed, model and adapter config are required")
        return None

    def configure(self, rnd: int, clients: list[ClientInfo]) -> dict[str, Instruction]:
        state = {n: t for n, t in self.global_state().items() if ".lora_A." not in n}
        expected = {n: s for n, s in self.model.shapes().items() if ".lora_A." not in n}
        self._sum = WeightedSum()
        return self.same_plan(rnd, clients, state, expected, freeze=(FROZEN,), upload=(SHIPPED,))
