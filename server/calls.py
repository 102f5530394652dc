"""The calls a client may hold open at once, bounded so that no client, honest or not, can make
the coordinator keep an unbounded number of streams (each holds buffers and a place in the
event loop) or crowd out the others.

The coordinator's gRPC server is asynchronous (:mod:`.rpcserver`): an open call costs memory,
not a thread, so a thousand long-polling clients cost a thousand small coroutines. Still:
- nobody unauthenticated holds a call: streaming handlers check the session in the call
  metadata before they read (:mod:`.service`), every other call is answered at once;
- an authenticated client holds at most :data:`LIMITS` calls of each kind at a time (counted
  per client id, not per session, so joining again does not buy more); one more is refused
  RESOURCE_EXHAUSTED at once;
- a stream that moves no message for ``stream_idle_s`` is cancelled (:mod:`.service`: each
  read or write waits that long at most; the client resumes it, as after any broken stream).

A per-peer-address limit was not used: clients behind one NAT share an address, and with the
session checked before reading an unauthenticated peer has nothing to hold.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager

from fedlora.common.errors import Refused, Status

# Calls one client may have open at a time, by kind. An honest client uses one of each at
# most (a second upload or download only while the first one's break reaches the coordinator).
LIMITS: dict[str, int] = {"upload": 2, "download": 2, "probe": 1, "task": 2}


class Calls:
    """Open calls per client and kind."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._open: dict[tuple[str, str], int] = {}

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
