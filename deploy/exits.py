"""Why a process of a local cluster ended, in one line, from its exit code and its log.

``fedlora run`` keeps each process's output in ``<run>/logs/<name>.log``; when one dies the
operator needs its reason at once, not a hunt through the folder. The reason is the last line
that says what went wrong: the command's own one-line error (``fedlora client: error: ...``),
an ERROR record of the logging format, or the last line of a traceback.
"""

from __future__ import annotations

import re
import signal
from dataclasses import dataclass
from pathlib import Path

TAIL_BYTES = 64 << 10  # the end of a log is where its reason is

# "2026-11-23 20:35:30,291 fedlora.client INFO joined ..." (deploy/cli.py's logging format)
_RECORD = re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d+ \S+ (?P<level>[A-Z]+) (?P<msg>.*)$")
_COMMAND = re.compile(r"^fedlora [a-z]+: (?:error: )?(?P<msg>.+)$")  # the CLI's one-line errors
_FAILED = {"ERROR", "CRITICAL"}


def last_error(log: Path) -> str:
    """The last line of ``log`` that says what went wrong ("" if none does): a command error
    without its ``fedlora <cmd>:`` prefix, an ERROR record's message, or a line that is not a
    log record and not indented (a traceback's last line, anything printed raw)."""
    try:
        with log.open("rb") as f:
            f.seek(max(0, f.seek(0, 2) - TAIL_BYTES))
            lines = f.read().decode("utf-8", "replace").splitlines()
    except OSError:
        return ""
    for line in reversed(lines):
        line = line.rstrip()
        if not line or line[0].isspace() or line.startswith("Traceback ("):
            continue
        if (m := _COMMAND.match(line)) is not None:
            return m["msg"]
        if (m := _RECORD.match(line)) is not None:
            if m["level"] in _FAILED:
                return m["msg"]
            continue
        return line
    return ""


@dataclass(frozen=True)
class Exit:
    """A cluster process that ended: its name, exit code (negative: killed by that signal)
    and the line from its log that says why."""

    name: str
    code: int
    reason: str

    @classmethod
    def of(cls, name: str, code: int, log: Path) -> "Exit":
        """A signal's victim wrote no reason: what its log says last is not why it died."""
        return cls(name, code, last_error(log) if code > 0 else "")

    def __str__(self) -> str:
        if self.code < 0:
            how = f"{self.name} was killed by {signal.Signals(-self.code).name}"
        else:
            how = f"{self.name} exited {self.code}"
        if self.reason or self.code < 0:
            return f"{how}: {self.reason}" if self.reason else how
        return f"{how} (nothing in its log says why)"
