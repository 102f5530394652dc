"""A heterogeneous network on one machine: one network namespace per host.

Layout: a bridge in a namespace of its own (Docker's FORWARD DROP in the root namespace would
break a bridge there), and the coordinator and every client in their own namespace, each
joined to the bridge by a veth pair. Each client link is shaped with tbf in both directions:
upload on the client's end (egress towards the bridge), download on the bridge's end (egress
towards the client). Each host has its own ``eth0``, so its counters are its own traffic.

There is no netem in this kernel, so no delay or loss is emulated: links differ in rate only.
Optional CPU limits per host: CPU pinning (taskset) and a CFS quota (cgroup v1 ``cpu`` or
cgroup v2 ``cpu.max``).

Everything made is recorded as it is made and removed by :meth:`Netns.teardown`, which is
idempotent and runs on normal exit, on error and on signals.
"""

from __future__ import annotations

import ipaddress
import logging
import os
import shutil
import subprocess
from pathlib import Path

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from fedlora.common.config import ConfigError, format_validation_error
from fedlora.deploy.shaping import tbf_args

log = logging.getLogger("fedlora.netns")


class HostSpec(BaseModel):
    model_config = ConfigDict(extra="forbid")
    cpus: str = Field("", pattern=r"^[0-9,\-]*$", description="CPU list for taskset, '' = any")
    cpu_quota: float = Field(0.0, ge=0, description="CPUs' worth of time (0.5 = half a core); 0 = none")
    threads: int = Field(0, ge=0, description="torch threads; 0 = cores / clients")


class ClientSpec(HostSpec):
    id: str = Field(pattern=r"^[A-Za-z0-9_.-]+$")
    up_mbit: float = Field(0.0, ge=0, description="upload rate in Mbit/s; 0 = unshaped")
    down_mbit: float = Field(0.0, ge=0, description="download rate in Mbit/s; 0 = unshaped")


class ClusterSpec(BaseModel):
    model_config = ConfigDict(extra="forbid")
    subnet: str = "10.213.0.0/24"
    coordinator: HostSpec = Field(default_factory=HostSpec)
    clients: list[ClientSpec] = Field(min_length=1)
    tbf_latency_ms: float = Field(100.0, gt=0, description="tbf queue length, as delay")

    @field_validator("subnet")
    @classmethod
    def _subnet(cls, v: str) -> str:
        net = ipaddress.ip_network(v, strict=True)
        if net.version != 4 or net.num_addresses < 4:
            raise ValueError("an IPv4 subnet with room for the hosts is needed")
        return v

    @model_validator(mode="after")
    def _fits(self) -> "ClusterSpec":
        ids = [c.id for c in self.clients]
        if len(set(ids)) != len(ids):
            raise ValueError("clients: duplicate id")
        if len(self.clients) + 3 > ipaddress.ip_network(self.subnet).num_addresses:
            raise ValueError("subnet: too small for the clients")
        return self


def load_spec(path: str | Path) -> ClusterSpec:
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"cluster spec {p}: not found")
    try:
        return ClusterSpec.model_validate(yaml.safe_load(p.read_text()) or {})
    except ValidationError as e:
        raise ConfigError(f"cluster spec {p}: " + format_validation_error(e).removeprefix("config error: ")) from None


def _run(*cmd: str) -> None:
    p = subprocess.run(cmd, capture_output=True, text=True)
    if p.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)}: {p.stderr.strip() or p.stdout.strip()}")


def require_root() -> None:
    if os.geteuid() != 0:
        raise PermissionError("the netns cluster needs root (ip netns, veth, tc); run it as root")
    for tool in ("ip", "tc"):
        if shutil.which(tool) is None:
            raise FileNotFoundError(f"the netns cluster needs '{tool}' (Debian package iproute2)")


class Netns:
    """Builds the namespaces, links, shaping and CPU limits of a :class:`ClusterSpec`."""

    def __init__(self, spec: ClusterSpec, prefix: str | None = None):
        self.spec = spec
        self.prefix = prefix or f"fl{os.getpid() % 100000}"
        self.bridge_ns = f"{self.prefix}-br"
        self.made_ns: list[str] = []
        self.cgroups: list[Path] = []
        net = ipaddress.ip_network(spec.subnet)
        hosts = list(net.hosts())
        self.ips = {"coordinator": str(hosts[0])}
        self.ns = {"coordinator": f"{self.prefix}-co"}
        for i, c in enumerate(spec.clients):
            self.ips[c.id] = str(hosts[i + 1])
            self.ns[c.id] = f"{self.prefix}-c{i}"
        self.prefixlen = net.prefixlen

    @property
    def coordinator_host(self) -> str:
        return self.ips["coordinator"]

    def threads(self, name: str) -> int:
        return self.host_spec(name).threads

    def describe(self) -> dict:
        return {"topology": "netns", "prefix": self.prefix, "namespaces": self.ns, "ips": self.ips,
                "links_mbit": {c.id: {"up": c.up_mbit, "down": c.down_mbit} for c in self.spec.clients}}

    def host_spec(self, name: str) -> HostSpec:
        if name == "coordinator":
            return self.spec.coordinator
        return next(c for c in self.spec.clients if c.id == name)

    def setup(self) -> None:
        require_root()
        try:
            self._add_ns(self.bridge_ns)
            _run("ip", "-n", self.bridge_ns, "link", "add", "br0", "type", "bridge")
            _run("ip", "-n", self.bridge_ns, "link", "set", "br0", "up")
            _run("ip", "-n", self.bridge_ns, "link", "set", "lo", "up")
            for i, name in enumerate(self.ns):
                self._add_host(i, name)
        except Exception:
            self.teardown()
            raise

    def _add_ns(self, ns: str) -> None:
        _run("ip", "netns", "add", ns)
        self.made_ns.append(ns)

    def _add_host(self, i: int, name: str) -> None:
        ns = self.ns[name]
        self._add_ns(ns)
        host_if, br_if = f"{self.prefix}h{i}", f"{self.prefix}b{i}"
        _run("ip", "-n", ns, "link", "add", host_if, "type", "veth", "peer", "name", br_if,
             "netns", self.bridge_ns)
        _run("ip", "-n", ns, "link", "set", host_if, "name", "eth0")
        _run("ip", "-n", ns, "addr", "add", f"{self.ips[name]}/{self.prefixlen}", "dev", "eth0")
        _run("ip", "-n", ns, "link", "set", "eth0", "up")
        _run("ip", "-n", ns, "link", "set", "lo", "up")
        _run("ip", "-n", self.bridge_ns, "link", "set", br_if, "master", "br0")
        _run("ip", "-n", self.bridge_ns, "link", "set", br_if, "up")
        spec = self.host_spec(name)
        up = getattr(spec, "up_mbit", 0.0)
        down = getattr(spec, "down_mbit", 0.0)
        lat = self.spec.tbf_latency_ms
        if up:
            _run("ip", "netns", "exec", ns, "tc", "qdisc", "add", "dev", "eth0", "root", *tbf_args(up, lat))
        if down:
            _run("ip", "netns", "exec", self.bridge_ns, "tc", "qdisc", "add", "dev", br_if, "root",
                 *tbf_args(down, lat))

    def wrap(self, name: str, argv: list[str]) -> list[str]:
        """The command line that runs ``argv`` inside host ``name`` with its CPU pinning."""
        spec = self.host_spec(name)
        cmd = ["ip", "netns", "exec", self.ns[name]]
        if spec.cpus:
            cmd += ["taskset", "-c", spec.cpus]
        return cmd + argv

    def limit_cpu(self, name: str, pid: int) -> None:
        """Puts a started process under its CFS quota, if the spec gives one."""
        quota = self.host_spec(name).cpu_quota
        if not quota:
            return
        period = 100_000
        v2 = Path("/sys/fs/cgroup/cgroup.controllers")
        if v2.is_file() and "cpu" in v2.read_text().split():
            cg = Path("/sys/fs/cgroup") / f"fedlora-{self.prefix}-{name}"
            cg.mkdir(exist_ok=True)
            self.cgroups.append(cg)
            (cg / "cpu.max").write_text(f"{int(quota * period)} {period}")
        elif Path("/sys/fs/cgroup/cpu/cgroup.procs").is_file():
            cg = Path("/sys/fs/cgroup/cpu") / f"fedlora-{self.prefix}-{name}"
            cg.mkdir(exist_ok=True)
            self.cgroups.append(cg)
            (cg / "cpu.cfs_period_us").write_text(str(period))
            (cg / "cpu.cfs_quota_us").write_text(str(int(quota * period)))
        else:
            raise RuntimeError("cpu_quota needs a writable cgroup cpu controller (v1 or v2)")
        (cg / "cgroup.procs").write_text(str(pid))

    def teardown(self) -> None:
        for ns in reversed(self.made_ns):  # deleting a namespace deletes its veth ends
            subprocess.run(["ip", "netns", "del", ns], capture_output=True)
        self.made_ns.clear()
        for cg in self.cgroups:
            try:
                cg.rmdir()
            except OSError as e:  # a process still inside: logged, not fatal
                log.warning("could not remove cgroup %s: %s", cg, e)
        self.cgroups.clear()


def leftover_namespaces(prefix: str) -> list[str]:
    p = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True)
    return [line.split()[0] for line in p.stdout.splitlines() if line.startswith(prefix + "-")]
