"""FFA-LoRA's client half: the digest of its frozen A goes with the join profile."""

from __future__ import annotations

from fedlora.client.hooks import ClientHooks
from fedlora.methods.ffa_lora.digest import PROFILE_KEY, lora_a_digest
from fedlora.proto.v1 import fedlora_pb2 as pb


class FFALoRAClient(ClientHooks):
    def on_join(self, profile: pb.DeviceProfile) -> None:
        am = self.ctx.model_for(self.ctx.spec.adapter)  # A is drawn when the adapter is built
        profile.extra[PROFILE_KEY] = lora_a_digest(am.state())
