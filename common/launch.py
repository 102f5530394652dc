"""How long ago this process was launched, by the kernel's clock rather than ours: start-up
(the interpreter, imports, loading the model) happens before any fedlora code could start a
timer, and it is what a user waits through before round 1."""

from __future__ import annotations

import os
import time

_IMPORTED = time.monotonic()  # the fallback's origin, where /proc is not there to read


def seconds_since_launch() -> float:
    """Seconds since the kernel started this process (``/proc/self/stat`` field 22, in clock
    ticks since boot, against ``/proc/uptime``; 10 ms resolution), or, without /proc, since
    this module was first imported (an under-estimate, by the imports before it)."""
    try:
        with open("/proc/self/stat", encoding="ascii") as f:
            # the command name (field 2) may hold spaces: count fields after its closing ')'
            started = int(f.read().rsplit(")", 1)[1].split()[19]) / os.sysconf("SC_CLK_TCK")
        with open("/proc/uptime", encoding="ascii") as f:
            return max(0.0, float(f.read().split()[0]) - started)
    except (OSError, ValueError, IndexError):
        return time.monotonic() - _IMPORTED
