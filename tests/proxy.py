"""A TCP proxy on 127.0.0.1 between a client and the coordinator that cuts every connection
once, at a chosen point of a gRPC transfer (the e2e tests of broken connections).

It forwards bytes both ways and reads the HTTP/2 frames of plaintext gRPC as they pass, so the
point of the cut does not depend on timing: per stream it counts the gRPC messages carried by
DATA frames (5-byte prefix, then the message). Uploads and downloads are the only streams with
more than one message when the link probe is off, so "the first stream past N messages" is the
transfer. Two rules:

- ``mid_stream(direction, after)``: in the first DATA frame, in ``direction`` ("up" = client to
  coordinator), of a stream that already carried ``after`` whole messages, forward half of the
  frame and cut: the transfer breaks in the middle of a chunk.
- ``before_close()``: when an upload stream ends (DATA with END_STREAM after at least two
  messages), forward that frame without END_STREAM, wait until ``taken()`` says the
  coordinator has the bytes (a record of the accepted upload; not a sleep: how long it takes to
  read them depends on the machine's load), and cut: every byte arrived, the stream never
  closed. With ``released``, only the client's side is cut: the coordinator's side of that
  connection stays open, its stream unfinished, until ``released()`` says so (the coordinator
  has not seen the break while the client goes on over a new connection).

A cut closes every open connection of the proxy; later connections are forwarded untouched.

A third rule does not cut but holds: ``hold_upload(nth)`` stops forwarding client-to-coordinator
bytes just before the ``nth`` upload's second message (so the coordinator holds at most its first
chunk and cannot accept it), sets ``held``, and keeps every connection's upward bytes waiting
until ``release()``, which cuts the open connections (later ones are forwarded untouched). A
client is thereby kept from finishing a chosen round's upload for as long as a test needs,
whatever the timing.
"""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
DATA, END_STREAM, PADDED = 0x0, 0x1, 0x8
# before_close cuts (and releases) anyway after this: the test's assertions then say why
TAKEN_TIMEOUT_S = 120.0


@dataclass
class Rule:
    direction: str      # "up" (client -> coordinator) or "down"
    after: int = 2      # whole messages the stream carried before the cut
    at_close: bool = False
    taken: Callable[[], bool] | None = None
    released: Callable[[], bool] | None = None


class Messages:
    """Counts whole gRPC messages in a stream's DATA bytes."""

    def __init__(self) -> None:
        self.count = 0
        self._prefix = bytearray()
        self._left = 0

    def feed(self, data: bytes) -> None:
        i = 0
        while i < len(data):
            if self._left == 0:
                take = min(5 - len(self._prefix), len(data) - i)
                self._prefix += data[i : i + take]
                i += take
                if len(self._prefix) == 5:
                    self._left = int.from_bytes(self._prefix[1:5], "big")
                    self._prefix.clear()
                    if self._left == 0:
                        self.count += 1
                continue
            take = min(self._left, len(data) - i)
            self._left -= take
            i += take
            if self._left == 0:
                self.count += 1


class CutProxy:
    def __init__(self, target: str):
        host, port = target.rsplit(":", 1)
        self.target = (host, int(port))
        self.listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.listener.bind(("127.0.0.1", 0))
        self.listener.listen(16)
        self.address = f"127.0.0.1:{self.listener.getsockname()[1]}"
        self.rule: Rule | None = None
        self.cuts: list[dict] = []
        self._lock = threading.Lock()
        self._conns: list[tuple[socket.socket, socket.socket]] = []
        self._kept: set[socket.socket] = set()  # coordinator sides a cut leaves open
        self._streams: dict[tuple[int, str, int], Messages] = {}
        self._closed = False
        self.held = threading.Event()
        self._open = threading.Event()  # clear while a hold keeps upward bytes back
        self._open.set()
        self._hold_at = 0               # the upload to hold (1 = the first); 0: none
        self._uploads = 0
        threading.Thread(target=self._accept, daemon=True).start()

    # ------------------------------------------------------------------ rules
    def mid_stream(self, direction: str, after: int = 2) -> None:
        self.rule = Rule(direction, after)

    def before_close(self, taken: Callable[[], bool],
                     released: Callable[[], bool] | None = None) -> None:
        self.rule = Rule("up", 2, at_close=True, taken=taken, released=released)

    def hold_upload(self, nth: int) -> None:
        self._hold_at = nth

    def release(self) -> None:
        """Ends a hold: the held connections are cut, later ones forwarded."""
        self._hold_at = 0
        self._cut_all()
        self._open.set()

    def close(self) -> None:
        self._closed = True
        self.listener.close()
        self._cut_all()

    # ------------------------------------------------------------------ forwarding
    def _accept(self) -> None:
        n = 0
        while not self._closed:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            try:
                server = socket.create_connection(self.target)
            except OSError:
                client.close()
                continue
            n += 1
            with self._lock:
                self._conns.append((client, server))
            threading.Thread(target=self._pump, args=(n, client, server, "up"), daemon=True).start()
            threading.Thread(target=self._pump, args=(n, server, client, "down"), daemon=True).start()

    def _pump(self, conn: int, src: socket.socket, dst: socket.socket, direction: str) -> None:
        try:
            if direction == "up":
                preface = _read(src, len(PREFACE))
                self._open.wait()
                dst.sendall(preface)
            while True:
                header = _read(src, 9)
                length = int.from_bytes(header[:3], "big")
                kind, flags = header[3], header[4]
                stream = int.from_bytes(header[5:9], "big") & 0x7FFFFFFF
                payload = _read(src, length)
                if kind == DATA and self._transfer_frame(conn, direction, stream, header, flags,
                                                         payload, dst):
                    return
                if direction == "up":
                    self._open.wait()
                dst.sendall(header + payload)
        except OSError:
            pass
        finally:
            for s in (src, dst):
                self._shut(s)

    def _transfer_frame(self, conn: int, direction: str, stream: int, header: bytes, flags: int,
                        payload: bytes, dst: socket.socket) -> bool:
        """Counts the frame's messages; True when it cut (after forwarding what the rule lets
        through)."""
        msgs = self._streams.setdefault((conn, direction, stream), Messages())
        before = msgs.count
        body = payload
        if flags & PADDED and payload:
            body = payload[1 : len(payload) - payload[0]]
        msgs.feed(body)
        if direction == "up" and before < 2 <= msgs.count:  # an upload's second message
            self._uploads += 1
            if self._uploads == self._hold_at:
                self._open.clear()
                self.held.set()
        rule = self.rule
        if rule is None or rule.direction != direction:
            return False
        if not rule.at_close and before >= rule.after:
            self.rule = None
            dst.sendall(header + payload[: len(payload) // 2])
            self._record("mid_stream", direction, before)
            return True
        if rule.at_close and flags & END_STREAM and msgs.count >= rule.after:
            self.rule = None
            dst.sendall(header[:4] + bytes([flags & ~END_STREAM]) + header[5:] + payload)
            _wait(rule.taken)
            if rule.released is not None:
                self._kept.add(dst)
                threading.Thread(target=self._release, args=(dst, rule.released),
                                 daemon=True).start()
            self._record("before_close", direction, msgs.count)
            return True
        return False

    def _record(self, kind: str, direction: str, messages: int) -> None:
        self.cuts.append({"kind": kind, "direction": direction, "messages": messages})
        self._cut_all()

    def _cut_all(self) -> None:
        with self._lock:
            conns, self._conns = self._conns, []
        for pair in conns:
            for s in pair:
                self._shut(s)

    def _shut(self, s: socket.socket) -> None:
        """Every cut goes through here: a coordinator side kept open is left to its release."""
        if s not in self._kept:
            _shut(s)

    def _release(self, kept: socket.socket, released: Callable[[], bool]) -> None:
        _wait(released)
        self._kept.discard(kept)
        _shut(kept)


def _wait(done: Callable[[], bool]) -> None:
    end = time.time() + TAKEN_TIMEOUT_S
    while not done() and time.time() < end:
        time.sleep(0.05)


def _read(s: socket.socket, n: int) -> bytes:
    buf = bytearray()
    while len(buf) < n:
        got = s.recv(n - len(buf))
        if not got:
            raise ConnectionResetError("peer closed")
        buf += got
    return bytes(buf)


def _shut(s: socket.socket) -> None:
    try:
        s.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass
    s.close()
