"""The coordinator's clock for client liveness: seconds it was awake to hear them.

A client is given up when the coordinator has not heard from it for ``client_timeout_s``. When
the coordinator itself stood still (SIGSTOP, a paused VM, a swap storm), nobody could reach it,
and blaming every client for that silence would throw away the round they are in. So stalls are
left out: a gap between two readings longer than ``STALL_GAP_S`` is not counted, and a ticker
reads the clock every ``TICK_S`` while the process runs, so a stall shows up as such a gap.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

log = logging.getLogger("fedlora.server")

TICK_S = 0.5        # the ticker's reading interval
STALL_GAP_S = 3.0   # a gap between readings longer than this is a stall of the coordinator
SWEEP_S = 1.0       # how often waiting loops look for clients gone silent


class AwakeClock:
    """Monotonic seconds, minus the stalls it noticed. Thread-safe."""

    def __init__(self, raw: Callable[[], float] = time.monotonic, stall_gap_s: float = STALL_GAP_S):
        self._raw = raw
        self._gap = stall_gap_s
        self._lock = threading.Lock()
        self._last = raw()
        self.stalled_s = 0.0
        self._stop = threading.Event()

    def now(self) -> float:
        with self._lock:
            t = self._raw()
            gap = t - self._last
            stalled = gap if gap > self._gap else 0.0
            self.stalled_s += stalled
            self._last = max(self._last, t)
            now = t - self.stalled_s
        if stalled:
            log.warning("the coordinator stood still for %.1fs: not counted as the clients' silence",
                        stalled)
        return now

    def start(self) -> None:
        """Reads the clock every ``TICK_S`` in a daemon thread until :meth:`stop`."""
        def tick() -> None:
            while not self._stop.wait(TICK_S):
                self.now()

        threading.Thread(target=tick, name="awake-clock", daemon=True).start()

    def stop(self) -> None:
        self._stop.set()
