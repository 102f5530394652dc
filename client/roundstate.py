"""State a client carries from round to round, kept by round, so that a redone round (a retry,
or the coordinator resuming after a crash) starts from the state before it and not from what
its first attempt left behind: the plan's ``keep_local`` tensors, a codec's error feedback.

A store is one folder, ``<state_dir>/<client id>/<name>/``, of ``round-<r>.safetensors``
files, each the state as of the end of round r (round 0: as first taken) and tagged with the
run id. Round r starts from the newest file before r; saving round r keeps that file and r,
nothing older (the coordinator journals each round before it opens the next, so no earlier
round is played again). Files of another run are ignored and cleared when a round is saved.
Writes are atomic, so a client killed mid-write keeps the previous file.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save

from fedlora.common.storage import write_atomic

_NAME = re.compile(r"^round-(\d+)\.safetensors$")
_KEY = "fedlora"  # one metadata entry (safetensors writes several in hash order)


class RoundStore:
    def __init__(self, folder: Path, run_id: str):
        self.folder = folder
        self.run_id = run_id

    def before(self, rnd: int) -> dict[str, torch.Tensor] | None:
        """The state as of the end of the newest round before ``rnd``, or None if none was kept."""
        rounds = [r for r in self._rounds() if r < rnd]
        return load_file(str(self._path(max(rounds)))) if rounds else None

    def latest(self) -> dict[str, torch.Tensor] | None:
        """The newest state this run kept."""
        rounds = self._rounds()
        return load_file(str(self._path(max(rounds)))) if rounds else None

    def save(self, rnd: int, tensors: dict[str, torch.Tensor]) -> None:
        """Keeps ``tensors`` as the state at the end of round ``rnd``."""
        meta = {_KEY: json.dumps({"run": self.run_id, "round": rnd})}
        write_atomic(self._path(rnd), save({k: v.detach().cpu().contiguous() for k, v in tensors.items()},
                                           metadata=meta))
        mine = self._rounds()
        start = max((r for r in mine if r < rnd), default=rnd)  # what a redo of rnd needs
        for path in self.folder.glob("round-*.safetensors"):
            m = _NAME.match(path.name)
            if m and not (int(m[1]) in mine and start <= int(m[1]) <= rnd):
                path.unlink(missing_ok=True)

    def _path(self, rnd: int) -> Path:
        return self.folder / f"round-{rnd:05d}.safetensors"

    def _rounds(self) -> list[int]:
        """The rounds kept for this run."""
        out = []
        for path in self.folder.glob("round-*.safetensors"):
            m = _NAME.match(path.name)
            if m and self._run_of(path) == self.run_id:
                out.append(int(m[1]))
        return out

    @staticmethod
    def _run_of(path: Path) -> str | None:
        try:
            with safe_open(str(path), "pt") as f:
                return json.loads((f.metadata() or {}).get(_KEY, "{}")).get("run")
        except (OSError, ValueError, SafetensorError):  # unreadable: not this run's
            return None
