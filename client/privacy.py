"""Client-side differential privacy: DP-SGD on the trainable tensors, with opacus.

Per-sample gradients come from opacus' ``GradSampleModule`` hooks (nn.Linear, the LoRA
factors and the classifier head, are supported); ``DPOptimizer`` clips each to
``clip_norm`` and adds Gaussian noise ``noise_multiplier x clip_norm``; batches are Poisson
samples with rate q = batch / n, which is what the RDP accountant assumes. The accountant's
history (noise, rate, steps per round) is kept in the client's state folder, so the epsilon
spent survives a client restart, and the client refuses a round that would take it past its
target epsilon.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from opacus.accountants import RDPAccountant
from opacus.accountants.utils import get_noise_multiplier

from fedlora.common.storage import write_atomic
from fedlora.proto.v1 import fedlora_pb2 as pb


class BudgetExhausted(RuntimeError):
    """Training this round would spend more privacy than the target allows."""


@dataclass
class PrivacyLedger:
    path: Path
    target_epsilon: float
    delta: float
    clip_norm: float
    noise_multiplier: float
    sample_rate: float
    history: list[tuple[float, float, int]] = field(default_factory=list)

    @classmethod
    def open(cls, path: Path, dp: pb.DifferentialPrivacy, n: int, batch_size: int,
             steps_per_round: int, rounds: int) -> "PrivacyLedger":
        """Loads the ledger, or starts one; the noise multiplier is fixed at the start (from the
        plan, or derived so that ``rounds`` rounds spend exactly the target epsilon)."""
        q = min(1.0, batch_size / max(1, n))
        if path.is_file():
            d = json.loads(path.read_text())
            return cls(path, d["target_epsilon"], d["delta"], d["clip_norm"], d["noise_multiplier"],
                       d["sample_rate"], [tuple(h) for h in d["history"]])
        sigma = dp.noise_multiplier
        if dp.target_epsilon > 0 and sigma <= 0:
            sigma = get_noise_multiplier(target_epsilon=dp.target_epsilon, target_delta=dp.delta,
                                         sample_rate=q, steps=rounds * steps_per_round, accountant="rdp")
        if sigma <= 0:
            raise ValueError("differential privacy needs noise_multiplier > 0 or a target_epsilon")
        ledger = cls(path, dp.target_epsilon, dp.delta, dp.clip_norm, sigma, q)
        ledger.save()
        return ledger

    def epsilon(self, extra_steps: int = 0) -> float:
        if not self.history and not extra_steps:
            return 0.0
        acc = RDPAccountant()
        acc.history = list(self.history)
        if extra_steps:
            acc.history.append((self.noise_multiplier, self.sample_rate, extra_steps))
        return float(acc.get_epsilon(self.delta))

    def check(self, steps: int) -> float:
        """The epsilon after ``steps`` more steps; raises when that passes the target."""
        after = self.epsilon(steps)
        if self.target_epsilon > 0 and after > self.target_epsilon * 1.0001:
            raise BudgetExhausted(f"privacy budget exhausted: epsilon would reach {after:.3f} > "
                                  f"target {self.target_epsilon:g} (delta {self.delta:g})")
        return after

    def record(self, steps: int) -> None:
        self.history.append((self.noise_multiplier, self.sample_rate, steps))
        self.save()

    def save(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        write_atomic(self.path, json.dumps({  # a torn ledger would forget spent budget
            "target_epsilon": self.target_epsilon, "delta": self.delta, "clip_norm": self.clip_norm,
            "noise_multiplier": self.noise_multiplier, "sample_rate": self.sample_rate,
            "history": self.history}, indent=1))
