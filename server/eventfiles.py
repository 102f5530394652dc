"""TensorBoard event files of a run, in ``<run_dir>/tensorboard/``: ``tensorboard --logdir runs/``
shows each run's rounds as they finish.

The event files are a view of ``metrics.jsonl``, never a second account of the run. When the
coordinator starts, the folder is removed and rebuilt from the records the file holds (none for
a new run; for a resumed one, the prefix :class:`~fedlora.server.runlog.RunLog` kept, up to the
last journaled round); after that each record is passed on as it is written (a RunLog
observer). So a round that a crashed coordinator recorded after its last journal commit, and
records again after the resume, appears once in the files, whatever reads them. TensorBoard's
own remedy, ``purge_step``, is honoured only by TensorBoard's reader and leaves the files
holding both; replaying the kept records costs one pass over them at start-up. A replayed
event's wall time is the time of the replay (the records keep seconds since their process
started, not the clock); rounds are laid out by step, which is the round number.

Written with tensorboardX's synchronous :class:`EventsWriter` rather than its ``SummaryWriter``:
that one hands events to a worker thread through a ten-slot queue per writer (one thread per
client sub-run), and a worker that died on a full disk would leave the next ``put`` blocked for
good, inside the RunLog's lock, stalling the run. Here a write error is logged once and ends the
event files only; the run and its records go on.

Runs (folders) and tags:

- ``tensorboard/``: ``test/<name>`` for each ``test_<name>`` of a round record (accuracy, loss;
  a causal LM's perplexity, its exact match being ``test/accuracy``), ``round/<field>`` for
  :data:`ROUND_FIELDS`, ``bytes/<up|down>/<level>`` summed over the round's clients (every
  attempt) for each of :data:`~fedlora.server.runlog.LEVELS` that was measured;
- ``tensorboard/clients/<client id>/``: ``client/bytes/<up|down>/<level>``,
  ``client/seconds/<up|down>`` and ``client/<metric>`` for each number the client reported
  (``local_accuracy``, ``train_loss``, ``train_seconds``, ...): TensorBoard draws the clients
  of one tag as one chart, a line per client.

A round's events are written when its ``round`` record is, so every step holds whole rounds.
"""

from __future__ import annotations

import logging
import shutil
import threading
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

from fedlora.server.runlog import (DIRECTIONS, LEVELS, Record, RunLog, finite_number, read_records,
                                    sum_bytes)

log = logging.getLogger("fedlora.server")

FOLDER = "tensorboard"  # in the run folder
CLIENTS = "clients"  # in FOLDER: a sub-run per client
ROUND_FIELDS = ("train_loss", "personal_accuracy", "seconds", "accepted", "dp_epsilon")


def attach(runlog: RunLog) -> "EventFiles":
    """Rebuilds ``<run_dir>/tensorboard/`` from the records ``runlog`` holds and has it follow
    every record written after. Call before anything else writes to ``runlog``."""
    events = EventFiles(runlog.dir / FOLDER)
    for rec in read_records(runlog.metrics_path):
        events(rec)
    runlog.observers.append(events)
    return events


class EventFiles:
    """Turns records into scalar events, a round at a time (see the module's docstring)."""

    def __init__(self, folder: Path):
        shutil.rmtree(folder, ignore_errors=True)  # rebuilt whole: see the module's docstring
        self.folder = folder
        self._writers: dict[str, Any] = {}  # "" (the coordinator's) or a client id -> EventsWriter
        self._clients: dict[int, list[Record]] = defaultdict(list)  # round -> its client records
        self._lock = threading.Lock()
        self._failed = folder.exists()  # old files left beside new ones would show rounds twice
        if self._failed:
            log.warning("no TensorBoard event files: %s could not be cleared", folder)

    def __call__(self, rec: Record) -> None:
        if self._failed:
            return
        with self._lock:
            try:
                if rec["type"] == "client":
                    self._clients[rec["round"]].append(rec)
                elif rec["type"] == "round":
                    self._round(rec)
            except OSError as e:  # the run goes on; its records are in metrics.jsonl
                self._failed = True
                log.warning("TensorBoard event files in %s stopped: %s", self.folder, e)

    def _round(self, rec: Record) -> None:
        step = rec["round"]
        scalars = {f"test/{k.removeprefix('test_')}": v for k, v in rec.items() if k.startswith("test_")}
        scalars.update({f"round/{k}": rec.get(k) for k in ROUND_FIELDS})
        clients = self._clients.pop(step, [])
        if step > 0:
            scalars.update(_bytes_scalars("bytes", sum_bytes(clients)))
        self._write("", step, scalars)
        by_client: dict[str, list[Record]] = defaultdict(list)
        for c in clients:
            by_client[c["client"]].append(c)
        for cid, recs in sorted(by_client.items()):
            self._write(cid, step, client_scalars(recs))
        for w in self._writers.values():  # a round is on disk when its record is
            w.flush()

    def _write(self, run: str, step: int, scalars: dict[str, Any]) -> None:
        from tensorboardX.proto.event_pb2 import Event
        from tensorboardX.proto.summary_pb2 import Summary

        values = [Summary.Value(tag=tag, simple_value=float(v)) for tag, v in scalars.items()
                  if finite_number(v)]
        if values:
            self._writer(run).write_event(Event(wall_time=time.time(), step=step,
                                                summary=Summary(value=values)))

    def _writer(self, run: str) -> Any:
        if run not in self._writers:
            from tensorboardX.event_file_writer import EventsWriter  # the coordinator's only

            folder = self.folder / CLIENTS / run if run else self.folder
            folder.mkdir(parents=True, exist_ok=True)
            self._writers[run] = EventsWriter(str(folder / "events"))
        return self._writers[run]

    def close(self) -> None:
        with self._lock:
            for w in self._writers.values():
                try:
                    w.close()
                except OSError as e:
                    log.warning("TensorBoard event file in %s not closed: %s", self.folder, e)
            self._writers.clear()
            self._failed = True  # records after the close are not for the files


def client_scalars(recs: list[Record]) -> dict[str, Any]:
    """One client's figures for a round from its records (one per attempt it was planned in):
    bytes and seconds summed, the metrics of its last report."""
    out: dict[str, Any] = _bytes_scalars("client/bytes", sum_bytes(recs))
    for d in DIRECTIONS:
        out[f"client/seconds/{d}"] = sum((r.get(d) or {}).get("seconds") or 0.0 for r in recs)
    metrics = next((r["metrics"] for r in reversed(recs) if r.get("metrics")), {})
    out.update({f"client/{k}": v for k, v in sorted(metrics.items())})
    return out


def _bytes_scalars(prefix: str, sums: dict[str, dict[str, int | None]]) -> dict[str, int | None]:
    return {f"{prefix}/{d}/{lvl}": sums[d][lvl] for d in DIRECTIONS for lvl in LEVELS}
