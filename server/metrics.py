"""The coordinator's Prometheus metrics, served at ``http://<host>:<metrics_port>/metrics``
while it runs (``metrics_port``, ``--metrics-port``; 0, the default, serves nothing).

The metrics say what ``metrics.jsonl`` says: they are fed by :meth:`Metrics.observe`, an
observer of every run-log record (:class:`fedlora.server.runlog.RunLog`), so there is one
account of the run and no second set of counting calls in the engine. Two facts the run log
does not record are given explicitly: an upload call refused (by the gRPC status the service
sends, :meth:`Metrics.upload_refused`) and the clients connected (read from the sessions at
scrape time, :meth:`Metrics.count_connected`).

The metric objects live in a private :class:`CollectorRegistry`, never the process-wide
default one: metric names can be registered once per registry, and a process may hold several
coordinators (the tests do), each with its own counts.

Labels are bounded: ``client`` only ever comes from ``client`` records, written for the clients
the engine planned (the run's configured ids, admitted with a session), never from a string a
peer sent; ``status`` is ``accepted`` or a :class:`fedlora.common.errors.Status` name;
``level``/``direction`` are the run log's :data:`LEVELS` and up/down; ``name`` of a test
metric is a field the task's evaluation writes (accuracy, loss, perplexity...).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable
from typing import Any
from wsgiref.simple_server import WSGIServer

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server
from prometheus_client.process_collector import ProcessCollector

from fedlora.common.config import ConfigError
from fedlora.common.errors import Status
from fedlora.server.runlog import DIRECTIONS, LEVELS

log = logging.getLogger("fedlora.server")

PREFIX = "fedlora"
ACCEPTED = "accepted"
TEST_FIELD = "test_"  # a round record's evaluation fields: test_accuracy, test_loss, ...
# a round takes seconds (a tiny model on loopback) to an hour (a large one over slow links)
ROUND_SECONDS_BUCKETS = (1, 2, 5, 10, 30, 60, 120, 300, 600, 1200, 1800, 3600, math.inf)


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.round = Gauge(f"{PREFIX}_round", "the last round aggregated (0: the initial "
                           "model; a resumed run starts at its journaled round)", registry=r)
        self.rounds_completed = Counter(f"{PREFIX}_rounds_completed", "rounds aggregated by this "
                                        "coordinator process", registry=r)
        self.rounds_failed = Counter(f"{PREFIX}_rounds_failed", "round attempts that ended with "
                                     "fewer than min_clients accepted updates", registry=r)
        self.round_seconds = Histogram(f"{PREFIX}_round_seconds", "wall seconds of each "
                                       "aggregated round, from its opening to its aggregation",
                                       buckets=ROUND_SECONDS_BUCKETS, registry=r)
        self.clients_connected = Gauge(f"{PREFIX}_clients_connected", "clients holding a live "
                                       "session", registry=r)
        self.uploads = Counter(f"{PREFIX}_uploads", "updates accepted (status=accepted) and upload "
                               "calls refused, by the gRPC status sent", ["status"], registry=r)
        self.bytes = Counter(f"{PREFIX}_bytes", "bytes moved per measured level (tensor, payload, "
                             "protobuf message, interface where the client's own), direction and client",
                             ["level", "direction", "client"], registry=r)
        self.test_metric = Gauge(f"{PREFIX}_test_metric", "the latest evaluation of the global "
                                 "model on the test split (the clients' weighted mean when they "
                                 "hold the model)", ["name"], registry=r)
        ProcessCollector(registry=r)  # the coordinator's own CPU and memory (Linux)
        self._httpd: WSGIServer | None = None

    # ------------------------------------------------------------------ feeding
    def observe(self, rec: dict[str, Any]) -> None:
        """A run-log record (:attr:`RunLog.observers`)."""
        kind = rec.get("type")
        if kind == "round":
            self._round(rec)
        elif kind == "client":
            self._client(rec)
        elif kind == "upload":
            self.uploads.labels(ACCEPTED).inc()
        elif kind == "round_failed":
            self.rounds_failed.inc()
        elif kind == "resume":
            self.round.set(rec["completed"])

    def _round(self, rec: dict[str, Any]) -> None:
        """The round gauge is set last: a scrape that sees round k sees all of k's counts."""
        if rec["round"] > 0:
            self.round_seconds.observe(rec["seconds"])
            self.rounds_completed.inc()
        for key, value in rec.items():
            if key.startswith(TEST_FIELD) and _number(value):
                self.test_metric.labels(key.removeprefix(TEST_FIELD)).set(value)
        self.round.set(rec["round"])

    def _client(self, rec: dict[str, Any]) -> None:
        for d in DIRECTIONS:
            moved = rec.get(d) or {}
            for level in LEVELS:
                value = moved.get(level)
                if _number(value) and value > 0:  # None: not measurable (shared loopback)
                    self.bytes.labels(level, d, rec["client"]).inc(value)

    def upload_refused(self, status: Status) -> None:
        """An upload call was refused with ``status`` (the service, as it aborts the call)."""
        self.uploads.labels(status.name).inc()

    def count_connected(self, connected: Callable[[], int]) -> None:
        """``connected()`` is read at every scrape: the count is never stale."""
        self.clients_connected.set_function(connected)

    # ------------------------------------------------------------------ serving
    def serve(self, host: str, port: int) -> None:
        """Serves ``/metrics`` over plain HTTP on ``host:port`` from a daemon thread; a port
        that cannot be bound is a :class:`ConfigError` naming ``metrics_port``."""
        try:
            self._httpd, _thread = start_http_server(port, addr=host, registry=self.registry)
        except OSError as e:
            raise ConfigError(f"config error: metrics_port: cannot bind {host}:{port}: "
                              f"{e.strerror or e}") from None
        log.info("Prometheus metrics on http://%s:%d/metrics", host, port)

    def close(self) -> None:
        """Stops serving (the coordinator's last step); the port is free afterwards."""
        if self._httpd is not None:
            self._httpd.shutdown()
            self._httpd.server_close()
            self._httpd = None


def _number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)
