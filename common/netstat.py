"""Bytes the network interface really carried, from the kernel's per-interface counters.

A process finds the interface that routes to its peer (a UDP socket ``connect`` asks the
kernel for the source address; the interface holding that address is the one) and reads
``/sys/class/net/<if>/statistics/{rx,tx}_bytes`` around each transfer. The counters include
Ethernet/IP/TCP headers, TLS, HTTP/2 framing, retransmissions and ACKs: the wire's view.

They are only meaningful when the interface carries this process's traffic alone (its own
network namespace or container). On a shared interface (loopback shared by every process
of a local cluster) the level is reported as unavailable, with the reason.
"""

from __future__ import annotations

import fcntl
import socket
import struct
from dataclasses import dataclass
from pathlib import Path

SIOCGIFADDR = 0x8915
SYS_NET = Path("/sys/class/net")


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


class InterfaceMeter:
    """Reads one interface's rx/tx byte counters; ``available`` says whether they are this
    process's own traffic."""

    def __init__(self, peer: str):
        try:
            self.interface = interface_of(source_ip(peer))
        except OSError:
            self.interface = None
        if self.interface is None:
            self.available, self.reason = False, f"no local interface found for {peer}"
        elif self.interface == "lo":
            self.available, self.reason = False, "shared loopback: counts every process on this host"
        elif not (SYS_NET / self.interface / "statistics").is_dir():
            self.available, self.reason = False, f"no counters for {self.interface}"
        else:
            self.available, self.reason = True, ""

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
