"""The run's journal: where a run stands after its last committed round, so that the same
command on the same run folder goes on from there after a crash.

Two files in the run folder, written atomically (a temp file, fsync, rename, fsync of the
folder), the JSON last, so it is the commit point:

- ``journal/state-<round>.safetensors``: the strategy's state (:meth:`Strategy.state`): the
  global adapter state plus whatever its method keeps across rounds;
- ``journal.json``: the run id, the resolved config, the rounds completed, the strategy's
  JSON state, the state file's name and sha256, and where the records stand: the byte size
  and record count of ``metrics.jsonl`` right after the round's record, fsynced first.

Nothing is pickled: tensors are safetensors, the rest JSON. A temp file a crash left behind is
never read (only the names above are) and is replaced by the next write.

Resume rules (:meth:`Journal.open`): a folder without a journal starts a new run (refused if it
holds records nonetheless: a run from before journals, or a foreign folder); a journaled run
resumes at its first unfinished round (the round open at the crash is redone from its start),
with ``metrics.jsonl`` cut back to the journaled size, so records continue without duplicates
and the summary counts each round once; a finished run, a changed config (other than the
fields in :data:`SERVING`, which say how to serve, not what to compute) or records that were
shortened since are refused with one line, as a :class:`ConfigError`.
"""

from __future__ import annotations

import dataclasses
import json
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file

from fedlora.common.config import ConfigError, ServerConfig, public_config
from fedlora.common.storage import file_sha256, write_atomic
from fedlora.common.wire.stwrite import write as st_write

JOURNAL = "journal.json"
STATE_DIR = "journal"
METRICS = "metrics.jsonl"
FORMAT = 1

# Config fields that may change between a run and its resumption: where and how the
# coordinator serves and evaluates, not what the run computes (``probe_links``: what clients
# measure, which feeds only LEGEND's planner, whose inputs are measured timings anyway).
# Client tokens are compared neither (``token``, and each entry's token in a ``clients``
# list): they may be rotated.
SERVING = frozenset({"host", "port", "tls", "insecure", "run_dir", "threads", "device",
                     "eval_batch_size", "join_timeout_s", "deadline_s", "token", "spool_bytes",
                     "open_run", "stream_idle_s", "tensorboard", "probe_links", "evaluate_every"})


@dataclass(frozen=True)
class Entry:
    """One committed point of a run: what ``journal.json`` holds."""

    run_id: str
    config: dict[str, Any]
    completed: int                  # rounds aggregated and journaled
    records_bytes: int              # metrics.jsonl size right after the last committed record
    records_count: int              # records (lines) in that prefix
    state_file: str = ""            # relative to the run folder
    state_sha256: str = ""
    meta: dict[str, Any] = field(default_factory=dict)  # the strategy's JSON state
    finished: bool = False          # every round done, adapter and summary written
    # the last round's record when it waits for the coordinator's evaluation (its fields but
    # the test figures): ``records_bytes`` ends before it, and a resumed run evaluates the
    # round again and writes it (server/engine.py); None when the record is in the prefix
    pending: dict[str, Any] | None = None

    def to_json(self) -> dict[str, Any]:
        return {"format": FORMAT, **dataclasses.asdict(self)}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> "Entry":
        if data.get("format") != FORMAT:
            raise ValueError(f"journal format {data.get('format')!r}, this version reads {FORMAT}")
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in names})


class Journal:
    """The journal of the run in ``run_dir``; :meth:`open` first, then :meth:`commit` after
    every aggregated round and :meth:`finish` at the end."""

    def __init__(self, run_dir: Path):
        self.dir = run_dir
        self.path = run_dir / JOURNAL
        self.entry: Entry | None = None
        self._config: dict[str, Any] = {}
        self.run_id = ""

    def read(self) -> Entry | None:
        """The committed entry, or None where there is none."""
        if not self.path.is_file():
            return None
        try:
            return Entry.from_json(json.loads(self.path.read_text(encoding="utf-8")))
        except (ValueError, TypeError) as e:
            raise ConfigError(f"config error: run_dir: the journal {self.path} cannot be read ({e})") from None

    def open(self, cfg: ServerConfig) -> Entry | None:
        """The entry to resume from, or None for a new run; refuses (ConfigError, one line)
        a folder that holds a finished run, a run of another config, records shortened since
        the last commit, or records without a journal."""
        self._config = json.loads(public_config(cfg))  # no token reaches the run folder
        entry = self.read()
        metrics = self.dir / METRICS
        size = metrics.stat().st_size if metrics.is_file() else 0
        if entry is None:
            if size:
                raise ConfigError(f"config error: run_dir: {self.dir} holds records ({METRICS}) but no "
                                  f"journal (a run of an older version?): choose another run_dir")
            self.run_id = f"{self.dir.name}-{uuid.uuid4().hex[:8]}"
            return None
        if entry.finished:
            raise ConfigError(f"config error: run_dir: {self.dir} holds a finished run ({entry.completed} "
                              f"of {entry.config.get('rounds')} rounds): choose another run_dir")
        changes = config_changes(entry.config, self._config)
        if changes:
            raise ConfigError(f"config error: config differs from the run in {self.dir}: "
                              + ", ".join(changes))
        count = _count_lines(metrics, entry.records_bytes) if size >= entry.records_bytes else -1
        if count != entry.records_count:
            raise ConfigError(f"config error: run_dir: {metrics} no longer holds the {entry.records_count} "
                              f"records the journal counts: it was changed since the run stopped")
        self.entry, self.run_id = entry, entry.run_id
        return entry

    def state(self, entry: Entry) -> dict[str, torch.Tensor]:
        """The journaled strategy tensors, checked against their digest."""
        path = self.dir / entry.state_file
        if file_sha256(path) != entry.state_sha256:
            raise ConfigError(f"config error: run_dir: {entry.state_file} does not match its "
                              f"digest in {JOURNAL}: the journal is damaged")
        return load_file(path)  # a tensor at a time from a map of the file

    def commit(self, completed: int, tensors: dict[str, torch.Tensor], meta: dict[str, Any],
               records: tuple[int, int], pending: dict[str, Any] | None = None) -> Entry:
        """Makes ``completed`` rounds durable: the state file, then the journal naming it.
        ``records`` is (bytes, count) of ``metrics.jsonl``, already fsynced; ``pending``: the
        round record still to be written, when its evaluation has not landed."""
        name = f"{STATE_DIR}/state-{completed:05d}.safetensors"
        written: list[str] = []  # a tensor at a time: a full model is not copied to be saved
        write_atomic(self.dir / name, lambda f: written.append(st_write(tensors, None, f)[1]))
        entry = Entry(run_id=self.run_id, config=self._config, completed=completed,
                      records_bytes=records[0], records_count=records[1], state_file=name,
                      state_sha256=written[0], meta=json.loads(json.dumps(meta)),
                      pending=None if pending is None else json.loads(json.dumps(pending)))
        self._write(entry)
        for old in (self.dir / STATE_DIR).glob("state-*.safetensors"):
            if old.name != Path(name).name:  # superseded: the journal no longer names it
                old.unlink(missing_ok=True)
        return entry

    def finish(self) -> None:
        """Marks the run finished: the same folder will not run again."""
        if self.entry is not None:
            self._write(dataclasses.replace(self.entry, finished=True))

    def _write(self, entry: Entry) -> None:
        write_atomic(self.path, (json.dumps(entry.to_json(), indent=2) + "\n").encode())
        self.entry = entry


def config_changes(old: dict[str, Any], new: dict[str, Any]) -> list[str]:
    """The fields (dotted) whose values differ, with both values where they are short;
    :data:`SERVING` fields and client tokens are not compared."""
    out: list[str] = []
    a, b = _comparable(old), _comparable(new)
    for key in sorted(set(a) | set(b)):
        _diff(a.get(key, _UNSET), b.get(key, _UNSET), key, out)
    return out


_UNSET = object()


def _comparable(cfg: dict[str, Any]) -> dict[str, Any]:
    out = {k: v for k, v in cfg.items() if k not in SERVING}
    if isinstance(out.get("clients"), list):
        out["clients"] = [{k: v for k, v in c.items() if k != "token"} if isinstance(c, dict) else c
                          for c in out["clients"]]
    return out


def _diff(a: Any, b: Any, path: str, out: list[str]) -> None:
    if isinstance(a, dict) and isinstance(b, dict):
        for key in sorted(set(a) | set(b)):
            _diff(a.get(key, _UNSET), b.get(key, _UNSET), f"{path}.{key}", out)
    elif a != b:
        shown = [_show(a), _show(b)]
        out.append(f"{path} ({shown[0]} -> {shown[1]})" if max(map(len, shown)) <= 40 else path)


def _show(v: Any) -> str:
    return "unset" if v is _UNSET else json.dumps(v, separators=(",", ":"))


def _count_lines(path: Path, size: int) -> int:
    """Records in the first ``size`` bytes of ``path``; -1 unless they end with a whole line."""
    if size == 0:
        return 0
    with open(path, "rb") as f:
        data = f.read(size)
    return data.count(b"\n") if len(data) == size and data.endswith(b"\n") else -1
