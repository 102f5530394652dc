"""Bytes the network interface really carried, from the kernel's per-interface counters, and
whether they are the client's own.

A process finds the interface that routes to its peer (a UDP socket ``connect`` asks the
kernel for the source address; the interface holding that address is the one) and reads
``/sys/class/net/<if>/statistics/{rx,tx}_bytes`` around each transfer. The counters include
Ethernet/IP/TCP headers, TLS, HTTP/2 and gRPC framing, retransmissions and ACKs: the wire's
view.

They are the transfer's bytes only where the interface carries this process's traffic alone
(its own network namespace or container). Nothing in the kernel says so, so the coordinator
judges each transfer (:func:`assess`) from what the client reports of its round:
- the quiet window: the interface's bytes while the client trained, between its download and
  its upload, when it sent and received nothing but heartbeats and keepalives. An interface
  that moved more than :data:`QUIET_SLACK_BYTES` plus :data:`QUIET_BYTES_PER_SECOND` a second
  then carries other traffic: the round's transfers are ``shared``, with what it moved;
- the transfer itself: counted bytes at least its own protobuf bytes (fewer: the counters are
  not on its path, ``unavailable``). There is no upper bound: retransmissions are the wire's
  bytes too, and on a policed link they reached 2.15x the transfer's bytes in the compose
  cluster (an exclusive interface). Reports from before the quiet window (no such figures) are
  judged by the old ratio rule (:func:`judge`: beyond :data:`FRAMING_RATIO` times plus
  :data:`FRAMING_SLACK_BYTES`, shared).
Loopback (shared by every process of a local cluster) and an interface the operator declares
shared are ``shared`` without a measurement; no interface or no counters are ``unavailable``.
The client reports its counters, its protobuf bytes, the quiet window and these static causes
as report metrics (:meth:`InterfaceMeter.report_metrics`); the coordinator judges them, so every
record's verdict comes from one rule.

Limits: other traffic that happens only while the client transfers, or under the quiet
allowance, passes as the client's own; a transfer broken mid-stream may count messages that
never reached the wire, so its counters can fall short and read as not on the path.
"""

from __future__ import annotations

import fcntl
import math
import socket
import struct
from collections.abc import Mapping
from dataclasses import dataclass
from enum import IntEnum
from pathlib import Path

SIOCGIFADDR = 0x8915
SYS_NET = Path("/sys/class/net")

# Verdicts on a transfer's interface bytes, worst first (a client's over many transfers is the
# worst of theirs): other traffic in them; not measured; the transfer's own.
SHARED, UNAVAILABLE, EXCLUSIVE = "shared", "unavailable", "exclusive"
VERDICTS = (SHARED, UNAVAILABLE, EXCLUSIVE)

# The ratio rule, kept only for reports without a quiet window (older clients): what an
# interface may carry beyond a transfer's protobuf bytes and still be taken as carrying it
# alone (headers, TLS, HTTP/2 and gRPC frames, a fixed slack for the calls around a transfer).
# It cannot tell retransmissions from other traffic (a policed compose link: 2.15x), hence the
# quiet window for today's reports.
FRAMING_RATIO = 1.10
FRAMING_SLACK_BYTES = 16 << 10

# What a client's own interface may move while it trains: its heartbeats (a small unary call
# every heartbeat_s) and HTTP/2 keepalive pings every 30 s. Seen in the netns test: 0-684 bytes
# in windows of 0.13-0.25 s; the allowance is far above that (not tried on a busy host NIC).
QUIET_SLACK_BYTES = 32 << 10
QUIET_BYTES_PER_SECOND = 1 << 10
QUIET_SECONDS_KEY = "iface_quiet_seconds"

# Report metrics (ReportRequest.metrics, numbers only): the interface's counters around each
# transfer, the client's own protobuf bytes of it, and why it measured nothing.
COUNTERS = ("rx", "tx")
COUNTED = {"up": "tx", "down": "rx"}  # the counter that carries a direction's data
UNMEASURED_KEY = "iface_unmeasured"


def counter_key(direction: str, counter: str) -> str:
    """``iface_<up|down>_<rx|tx>_bytes``: a counter's delta over a transfer, as reported."""
    return f"iface_{direction}_{counter}_bytes"


def own_key(direction: str) -> str:
    """``client_<up|down>_protobuf_bytes``: the client's count of the transfer's messages."""
    return f"client_{direction}_protobuf_bytes"


class Unmeasured(IntEnum):
    """Why a client measures no interface bytes at all (a report metric, :data:`UNMEASURED_KEY`)."""

    LOOPBACK = 1
    NO_INTERFACE = 2
    NO_COUNTERS = 3
    DECLARED_SHARED = 4


def _host_port(address: str) -> tuple[str, int]:
    host, _, port = address.rpartition(":")
    return host.strip("[]") or "127.0.0.1", int(port or 0)


def source_ip(peer: str) -> str:
    host, port = _host_port(peer)
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_DGRAM) as s:
        s.connect((host, port or 9))
        return s.getsockname()[0]


def interface_of(ip: str) -> str | None:
    """The interface holding IPv4 address ``ip`` (loopback addresses map to ``lo``)."""
    if ip.startswith("127.") or ip == "::1":
        return "lo"
    for _, name in socket.if_nameindex():
        try:
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
                packed = fcntl.ioctl(s.fileno(), SIOCGIFADDR, struct.pack("256s", name.encode()[:15]))
            if socket.inet_ntoa(packed[20:24]) == ip:
                return name
        except OSError:
            continue
    return None


@dataclass(frozen=True)
class Counters:
    rx: int
    tx: int


@dataclass(frozen=True)
class Verdict:
    """Whether a transfer's interface bytes are its own (:data:`VERDICTS`), and why."""

    kind: str
    reason: str

    @property
    def exclusive(self) -> bool:
        return self.kind == EXCLUSIVE


UNMEASURED = {
    Unmeasured.LOOPBACK: Verdict(SHARED, "loopback: counts every process on the client's host"),
    Unmeasured.NO_INTERFACE: Verdict(UNAVAILABLE, "no local interface routes to the coordinator"),
    Unmeasured.NO_COUNTERS: Verdict(UNAVAILABLE, "the interface has no byte counters"),
    Unmeasured.DECLARED_SHARED: Verdict(SHARED, "declared shared by the client's operator "
                                                "(shared_interface)"),
}
# the allowance in words, for the verdicts' reasons
ALLOWANCE = f"{FRAMING_RATIO:g}x + {FRAMING_SLACK_BYTES >> 10} KiB of framing"


def judge(counted: int, own: int) -> Verdict:
    """One transfer's verdict: ``counted`` interface bytes against the ``own`` protobuf bytes
    of its messages, which they must contain, with no more than the framing allowance on top."""
    if own <= 0:
        return Verdict(UNAVAILABLE, "no protobuf bytes of the transfer to compare with")
    ratio = f"its interface carried {counted / own:.2f}x the transfer's protobuf bytes"
    if counted < own:
        return Verdict(UNAVAILABLE, f"{ratio}: fewer than crossed, so not the transfer's path")
    if counted > own * FRAMING_RATIO + FRAMING_SLACK_BYTES:
        return Verdict(SHARED, f"{ratio}, over {ALLOWANCE}: other traffic")
    return Verdict(EXCLUSIVE, f"{ratio}, within {ALLOWANCE}")


def quiet_key(counter: str) -> str:
    """``iface_quiet_<rx|tx>_bytes``: a counter's delta while the client trained."""
    return f"iface_quiet_{counter}_bytes"


UNKNOWN_QUIET = Verdict(UNAVAILABLE, "no quiet window reported")  # an older client's report


def quiet_traffic(report: Mapping[str, float]) -> Verdict | None:
    """Whether the interface moved other traffic while the client trained: ``shared`` with
    what it moved; None if it stayed quiet; :data:`UNKNOWN_QUIET` where the report has no
    window (an older client's), for :func:`assess` to fall back on the ratio rule."""
    moved = [_count(report.get(quiet_key(c))) for c in COUNTERS]
    seconds = report.get(QUIET_SECONDS_KEY)
    if any(m is None for m in moved) or seconds is None or not math.isfinite(seconds) or seconds < 0:
        return UNKNOWN_QUIET
    total = sum(moved)  # type: ignore[arg-type]
    allowed = QUIET_SLACK_BYTES + QUIET_BYTES_PER_SECOND * seconds
    if total > allowed:
        return Verdict(SHARED, f"its interface moved {total} bytes in the {seconds:.1f}s the client "
                               f"trained (only heartbeats of its own; at most {int(allowed)} allowed): "
                               "other traffic")
    return None


def assess(direction: str, report: Mapping[str, float]) -> tuple[int | None, Verdict]:
    """A transfer's interface level from the client's report metrics: the counter that carries
    ``direction`` (None where none was reported) and its verdict."""
    counted = _count(report.get(counter_key(direction, COUNTED[direction])))
    own = _count(report.get(own_key(direction)))
    static = UNMEASURED.get(report.get(UNMEASURED_KEY))  # a code from a client's meter
    if static is not None:
        return counted, static
    if own == 0 and counted is None:
        return None, Verdict(UNAVAILABLE, "nothing crossed")
    if counted is None or own is None:
        return counted, Verdict(UNAVAILABLE, "the client reported no interface counters")
    quiet = quiet_traffic(report)
    if quiet is UNKNOWN_QUIET:  # an older client's report: the ratio rule
        return counted, judge(counted, own)
    if quiet is not None:
        return counted, quiet
    if own <= 0 or counted < own:
        return counted, judge(counted, own)  # not the transfer's path (unavailable)
    return counted, Verdict(EXCLUSIVE, f"its interface carried {counted / own:.2f}x the transfer's "
                                       "protobuf bytes and stayed quiet while the client trained")


def _count(v: float | None) -> int | None:
    """A reported byte count; None where missing, negative or not finite."""
    return None if v is None or not math.isfinite(v) or v < 0 else int(v)


class InterfaceMeter:
    """Reads one interface's rx/tx byte counters; ``available`` says whether there are any to
    read, ``reason`` why not. ``declared_shared``: the operator says the interface carries other
    traffic too, so nothing is measured (the counters would not be this client's)."""

    def __init__(self, peer: str, declared_shared: bool = False):
        try:
            self.interface = interface_of(source_ip(peer))
        except OSError:
            self.interface = None
        self.unmeasured: Unmeasured | None = None
        if declared_shared:
            self.unmeasured = Unmeasured.DECLARED_SHARED
        elif self.interface is None:
            self.unmeasured = Unmeasured.NO_INTERFACE
        elif self.interface == "lo":
            self.unmeasured = Unmeasured.LOOPBACK
        elif not (SYS_NET / self.interface / "statistics").is_dir():
            self.unmeasured = Unmeasured.NO_COUNTERS
        self.available = self.unmeasured is None
        self.reason = ("" if self.unmeasured is None
                       else f"{self.interface or peer}: {UNMEASURED[self.unmeasured].reason}")

    def read(self) -> Counters | None:
        if not self.available:
            return None
        stats = SYS_NET / self.interface / "statistics"
        return Counters(int((stats / "rx_bytes").read_text()), int((stats / "tx_bytes").read_text()))

    @staticmethod
    def delta(before: Counters | None, after: Counters | None) -> Counters | None:
        if before is None or after is None:
            return None
        return Counters(after.rx - before.rx, after.tx - before.tx)

    def quiet_metrics(self, counters: Counters | None, seconds: float) -> dict[str, float]:
        """What the report says of the quiet window (the interface's deltas while the client
        trained, and how long it trained); nothing where nothing was measured."""
        if self.unmeasured is not None or counters is None:
            return {}
        return {QUIET_SECONDS_KEY: float(seconds),
                **{quiet_key(c): float(getattr(counters, c)) for c in COUNTERS}}

    def report_metrics(self, direction: str, counters: Counters | None,
                       own_bytes: int) -> dict[str, float]:
        """What the report says of one transfer: its protobuf bytes and the interface's deltas
        over it, or why none were measured; the coordinator judges them (:func:`assess`)."""
        out = {own_key(direction): float(own_bytes)}
        if self.unmeasured is not None:
            out[UNMEASURED_KEY] = float(self.unmeasured)
        elif counters is not None:
            out.update({counter_key(direction, c): float(getattr(counters, c)) for c in COUNTERS})
        return out
