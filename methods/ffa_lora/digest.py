"""The check that every process holds the same frozen A: FFA-LoRA's A never crosses the wire,
so a client that drew a different one (other seed, model or adapter config) would train B
against the wrong A without anyone noticing."""

from __future__ import annotations

import hashlib

import torch

PROFILE_KEY = "lora_a_digest"  # DeviceProfile.extra


def lora_a_digest(tensors: dict[str, torch.Tensor]) -> str:
    """A digest of every LoRA ``A`` (names and values), to check that two processes agree."""
    h = hashlib.sha256()
    for name in sorted(n for n in tensors if ".lora_A." in n):
        t = tensors[name].detach().to(torch.float32).contiguous().cpu()
        h.update(name.encode())
        h.update(t.numpy().tobytes())
    return h.hexdigest()
