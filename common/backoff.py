"""Capped, jittered exponential backoff between retries of a transient failure.

"Full jitter" (each delay uniform in ``[0, min(cap, first * 2**n)]``): when a coordinator
comes back, the clients it lost together do not all knock at the same instant, and the
expected wait stays short while the cap bounds the worst one. A success resets the sequence.
"""

from __future__ import annotations

import random

from fedlora.common.wire.protocol import RETRY_FIRST_S, RETRY_MAX_S


class Backoff:
    def __init__(self, first_s: float = RETRY_FIRST_S, cap_s: float = RETRY_MAX_S,
                 rng: random.Random | None = None):
        if first_s <= 0 or cap_s < first_s:
            raise ValueError("backoff: need 0 < first_s <= cap_s")
        self.first_s = first_s
        self.cap_s = cap_s
        self.rng = rng or random.Random()
        self.attempt = 0

    def ceiling(self) -> float:
        """The largest delay the next :meth:`next` may return."""
        return min(self.cap_s, self.first_s * 2 ** min(self.attempt, 62))

    def next(self) -> float:
        """Seconds to wait before the next try; each call widens the range up to the cap."""
        delay = self.rng.uniform(0.0, self.ceiling())
        self.attempt += 1
        return delay

    def reset(self) -> None:
        self.attempt = 0
