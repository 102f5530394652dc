"""The calls that may hold a handler thread, bounded so that the coordinator's thread pool
always has threads for everyone else.

gRPC's sync server runs each call on a pool thread until its handler returns. A unary call
returns at once, except GetTask (a long-poll, at most ``LONG_POLL_MAX_S``); a stream holds its
thread while it waits for the peer's next message (Upload, ProbeUpload) or for the peer to take
the next one (Download, ProbeDownload). So:
- nobody unauthenticated holds a thread: streaming handlers check the session in the call
  metadata before they read (:mod:`.service`), every other call is refused at once;
- an authenticated client holds at most :data:`LIMITS` calls of each kind at a time (counted
  per client id, not per session, so joining again does not buy more); one more is refused
  RESOURCE_EXHAUSTED at once;
- a stream that moves no message for ``stream_idle_s`` is cancelled by a reaper thread,
  which frees its thread (the client resumes it, as after any broken stream);
- the pool has :meth:`Calls.pool_size` threads: every client's limits plus
  :data:`RESERVE` for the quick calls (Join, Heartbeat, Report, UploadStatus, health).

A per-peer-address limit was not used: clients behind one NAT share an address, and with the
session checked before reading an unauthenticated peer has nothing to hold.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import TypeVar

from fedlora.common.errors import Refused, Status

log = logging.getLogger("fedlora.server")

T = TypeVar("T")

# Calls one client may have open at a time, by kind. An honest client uses one of each at
# most (a second upload or download only while the first one's break reaches the coordinator).
LIMITS: dict[str, int] = {"upload": 2, "download": 2, "probe": 1, "task": 2}
RESERVE = 16  # pool threads beyond every client's limits: the quick calls


class Stream:
    """One open stream: when it last moved a message, and how to cancel it."""

    def __init__(self, cid: str, kind: str, cancel: Callable[[], None], now: float):
        self.cid, self.kind, self.cancel = cid, kind, cancel
        self.moved = now
        self.cancelled = False


class Calls:
    """Open calls per client and kind, and the idle-stream reaper."""

    def __init__(self, idle_s: float, clock: Callable[[], float] = time.monotonic):
        self.idle_s = idle_s
        self.clock = clock
        self._lock = threading.Lock()
        self._open: dict[tuple[str, str], int] = {}
        self._streams: set[Stream] = set()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    @staticmethod
    def pool_size(clients: int) -> int:
        """Threads enough for every client at its limits, and the quick calls besides."""
        return clients * sum(LIMITS.values()) + RESERVE

    @contextmanager
    def hold(self, cid: str, kind: str) -> Iterator[None]:
        """One call of ``kind`` by ``cid`` while the block runs; RESOURCE_EXHAUSTED at once
        if the client already holds its limit."""
        key = (cid, kind)
        with self._lock:
            n = self._open.get(key, 0)
            if n >= LIMITS[kind]:
                raise Refused(Status.RESOURCE_EXHAUSTED,
                              f"client {cid!r} already has {n} {kind} calls open (at most "
                              f"{LIMITS[kind]})")
            self._open[key] = n + 1
        try:
            yield
        finally:
            with self._lock:
                self._open[key] -= 1
                if not self._open[key]:
                    del self._open[key]

    def open(self, key: tuple[str, str]) -> int:
        with self._lock:
            return self._open.get(key, 0)

    @contextmanager
    def stream(self, cid: str, kind: str, cancel: Callable[[], None]) -> Iterator[Stream]:
        """One stream of ``kind`` by ``cid`` (a call :meth:`hold` counts, so RESOURCE_EXHAUSTED
        past the limit), watched for idleness while the block runs: call :meth:`moved` on each
        message; the reaper calls ``cancel`` once it has been idle for ``idle_s``."""
        with self.hold(cid, kind):
            st = Stream(cid, kind, cancel, self.clock())
            with self._lock:
                self._streams.add(st)
            try:
                yield st
            finally:
                with self._lock:
                    self._streams.discard(st)

    def moved(self, st: Stream) -> None:
        st.moved = self.clock()

    def watch(self, st: Stream, it: Iterator[T]) -> Iterator[T]:
        """``it``, marking ``st`` as moved on each message."""
        for msg in it:
            self.moved(st)
            yield msg

    def reap(self) -> list[Stream]:
        """Cancels the streams idle for ``idle_s`` or longer; returns them."""
        now = self.clock()
        with self._lock:
            idle = [s for s in self._streams if not s.cancelled and now - s.moved >= self.idle_s]
            for s in idle:
                s.cancelled = True
        for s in idle:
            log.warning("%s stream of client %s idle for %.0fs (stream_idle_s=%g): cancelled",
                        s.kind, s.cid, now - s.moved, self.idle_s)
            s.cancel()
        return idle

    def start(self) -> None:
        def loop() -> None:
            while not self._stop.wait(min(1.0, self.idle_s / 4)):
                self.reap()

        self._thread = threading.Thread(target=loop, name="stream-reaper", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
