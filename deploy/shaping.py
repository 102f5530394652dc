"""Link shaping with tc: the same tbf on the netns cluster's veths and inside a client
container (``fedlora shape``, run by the container's entrypoint with NET_ADMIN).

Upload is egress: tbf on the host's own interface. Download, inside a container, is ingress
on that same interface, which tbf cannot queue: ingress traffic is redirected (mirred) to an
ifb device and shaped there with the same tbf. The interface's own rx counter still counts it.
The netns cluster shapes download with tbf on the bridge side, where it is egress.
"""

from __future__ import annotations

import subprocess


def tbf_args(mbit: float, latency_ms: float) -> list[str]:
    """tbf with a burst large enough for the kernel timer at this rate (>= rate/250 s)."""
    rate_bytes = mbit * 1e6 / 8
    burst = max(16 * 1024, int(rate_bytes / 250))
    return ["tbf", "rate", f"{mbit}mbit", "burst", str(burst), "latency", f"{latency_ms}ms"]


def shape_interface(dev: str, up_mbit: float, down_mbit: float, latency_ms: float = 100.0) -> list[str]:
    """Shapes ``dev`` (0 = leave that direction alone); returns what it did, for the log."""
    done = []
    if up_mbit:
        subprocess.run(["tc", "qdisc", "replace", "dev", dev, "root", *tbf_args(up_mbit, latency_ms)], check=True)
        done.append(f"up {up_mbit:g} Mbit/s (tbf)")
    if down_mbit:
        ifb = f"ifb-{dev}"[:15]
        if subprocess.run(["ip", "link", "show", ifb], capture_output=True).returncode != 0:
            subprocess.run(["ip", "link", "add", ifb, "type", "ifb"], check=True)
        subprocess.run(["ip", "link", "set", ifb, "up"], check=True)
        subprocess.run(["tc", "qdisc", "replace", "dev", dev, "handle", "ffff:", "ingress"], check=True)
        subprocess.run(["tc", "filter", "replace", "dev", dev, "parent", "ffff:", "protocol", "all", "u32",
                        "match", "u32", "0", "0", "action", "mirred", "egress", "redirect", "dev", ifb],
                       check=True)
        subprocess.run(["tc", "qdisc", "replace", "dev", ifb, "root", *tbf_args(down_mbit, latency_ms)], check=True)
        done.append(f"down {down_mbit:g} Mbit/s (ingress via {ifb}, tbf)")
    return done
