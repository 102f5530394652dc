"""Client-side differential privacy: DP-SGD on the trainable tensors, with opacus.

Per-sample gradients come from opacus' ``GradSampleModule`` hooks (nn.Linear, the LoRA
factors and the classifier head, are supported); ``DPOptimizer`` clips each to
``clip_norm`` and adds Gaussian noise ``noise_multiplier x clip_norm``; batches are Poisson
samples with rate q = batch / n, which is what the RDP accountant assumes.

The noise and the Poisson sample are the client's secret (:class:`SecretRandomness`, from OS
entropy): the coordinator knows the run seed, so anything drawn from it would be known to the
party the epsilon is meant to hold against.

The accountant's history (noise, rate, steps per round) is kept per run in the client's state
folder (:func:`ledger_path`), so the epsilon spent survives a restart of either end, a new
run starts its own ledger without erasing an old one's, and the client refuses a round that
would take it past its target epsilon. A ledger that cannot be read is refused, never reset:
forgetting spent budget would void the guarantee.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import secrets
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from fedlora.common.storage import write_atomic
from fedlora.proto.v1 import fedlora_pb2 as pb

log = logging.getLogger("fedlora.client")

LEDGER_DIR = "privacy"  # <state>/<id>/privacy/<run key>.json, one ledger per run


class LedgerCorrupt(ValueError):
    """The ledger file cannot be read as this run's ledger; it is left as it is. A ValueError,
    so the client ends with this one line (exit 2) instead of training on a forgotten budget."""


def ledger_path(state_dir: Path, run_id: str) -> Path:
    """The run's ledger file. Keyed by a hash of the run id (the coordinator names runs; the
    name need not be a safe file name); the file itself records the id in full."""
    return state_dir / LEDGER_DIR / f"{hashlib.sha256(run_id.encode()).hexdigest()[:16]}.json"


@dataclass
class SecretRandomness:
    """Where DP-SGD's noise and Poisson sample come from: OS entropy, fresh for each round,
    never the run seed (nor torch's or numpy's global RNG, which other code may seed from it).

    ``noise`` is torchcsprng's ``/dev/urandom`` generator where that package is importable
    (opacus' own secure mode); otherwise a ``torch.Generator`` on the training device seeded
    with 64 secret bits. Either way the trainer asks opacus for its secure mode (noise robust
    to floating-point attacks, each value a sum of Gaussians)."""

    noise: torch.Generator
    sample: np.random.Generator

    @classmethod
    def fresh(cls, device: torch.device) -> "SecretRandomness":
        sample = np.random.default_rng(secrets.randbits(128))
        try:
            import torchcsprng  # type: ignore[import-not-found]
        except ImportError:
            _note_no_csprng()
            noise = torch.Generator(device=device)
            noise.manual_seed(secrets.randbits(64))
            return cls(noise, sample)
        return cls(torchcsprng.create_random_device_generator("/dev/urandom"), sample)


_noted = False


def _note_no_csprng() -> None:
    global _noted
    if not _noted:
        _noted = True
        log.info("DP-SGD noise: torchcsprng is not installed; a torch generator seeded from OS "
                 "entropy (64 bits) draws it, in opacus' floating-point-safe mode")


class BudgetExhausted(RuntimeError):
    """Training this round would spend more privacy than the target allows."""


@dataclass
class PrivacyLedger:
    path: Path
    run_id: str
    target_epsilon: float
    delta: float
    clip_norm: float
    noise_multiplier: float
    sample_rate: float
    history: list[tuple[float, float, int]] = field(default_factory=list)

    @classmethod
    def open(cls, path: Path, run_id: str, dp: pb.DifferentialPrivacy, n: int, batch_size: int,
             steps_per_round: int, rounds: int) -> "PrivacyLedger":
        """Loads run ``run_id``'s ledger (a resumed run goes on spending from it), or starts
        one; the noise multiplier is fixed at the start (from the plan, or derived so that
        ``rounds`` rounds spend exactly the target epsilon)."""
        q = min(1.0, batch_size / max(1, n))
        if path.exists():
            return cls.load(path, run_id)
        sigma = dp.noise_multiplier
        if dp.target_epsilon > 0 and sigma <= 0:
            from opacus.accountants.utils import get_noise_multiplier  # see epsilon()

            sigma = get_noise_multiplier(target_epsilon=dp.target_epsilon, target_delta=dp.delta,
                                         sample_rate=q, steps=rounds * steps_per_round, accountant="rdp")
        if sigma <= 0:
            raise ValueError("differential privacy needs noise_multiplier > 0 or a target_epsilon")
        ledger = cls(path, run_id, dp.target_epsilon, dp.delta, dp.clip_norm, sigma, q)
        ledger.save()
        return ledger

    @classmethod
    def load(cls, path: Path, run_id: str) -> "PrivacyLedger":
        """The ledger at ``path``, checked field by field; raises :class:`LedgerCorrupt` (and
        leaves the file alone) when it is not a whole ledger of run ``run_id``."""
        def bad(why: str) -> LedgerCorrupt:
            return LedgerCorrupt(f"privacy ledger {path}: {why}; it records the privacy budget "
                                 "already spent, so it is not reset: restore it, or move it aside "
                                 "to start this run's accounting over knowingly")
        try:
            d = json.loads(path.read_text())
        except (OSError, UnicodeDecodeError, ValueError) as e:
            raise bad(f"unreadable ({e})") from None
        if not isinstance(d, dict):
            raise bad("not a JSON object")
        if d.get("run_id") != run_id:
            raise bad(f"run_id is {d.get('run_id')!r}, not {run_id!r}")

        def num(key: str, ok) -> float:
            v = d.get(key)
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or not ok(v):
                raise bad(f"{key} is {v!r}")
            return float(v)

        target = num("target_epsilon", lambda v: v >= 0)
        delta = num("delta", lambda v: 0 < v < 1)
        clip = num("clip_norm", lambda v: v > 0)
        sigma = num("noise_multiplier", lambda v: v > 0)
        q = num("sample_rate", lambda v: 0 < v <= 1)
        history = d.get("history")
        if not isinstance(history, list):
            raise bad(f"history is {history!r}")
        steps: list[tuple[float, float, int]] = []
        for h in history:
            if (not isinstance(h, list) or len(h) != 3 or h[0] != sigma or h[1] != q
                    or isinstance(h[2], bool) or not isinstance(h[2], int) or h[2] < 0):
                raise bad(f"history entry {h!r} is not [noise_multiplier, sample_rate, steps]")
            steps.append((float(h[0]), float(h[1]), int(h[2])))
        return cls(path, run_id, target, delta, clip, sigma, q, steps)

    def epsilon(self, extra_steps: int = 0) -> float:
        if not self.history and not extra_steps:
            return 0.0
        # imported here: opacus' accountants take ~1.8 s to import (scipy.stats, torch's
        # distributed tensors), which a client that runs no DP should not pay at start-up
        from opacus.accountants import RDPAccountant

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
            "run_id": self.run_id, "target_epsilon": self.target_epsilon, "delta": self.delta,
            "clip_norm": self.clip_norm, "noise_multiplier": self.noise_multiplier, "sample_rate": self.sample_rate,
            "history": self.history}, indent=1))
