"""``fedlora run``: a coordinator and N clients as separate OS processes on 127.0.0.1.

Transport: unless ``--insecure``, the command makes a CA and certificates in ``<run>/certs``
(``fedlora certs``) and runs the cluster on mutual TLS, each client with the certificate of
its own id, as a deployment across machines would.

Credentials: unless the config already gives each client its own token (or is an open run),
the command makes one per client (``fedlora tokens``) in ``<run>/tokens.yaml`` (mode 0600) and
gives each client process its own, so a client cannot join as another even over plaintext.

Each process logs to ``<run>/logs/<name>.log``. The coordinator binds a free port and writes
it to ``coordinator.json``; clients are started against that address. On exit, error or
Ctrl-C every child is terminated (then killed) by PID: nothing outlives the command.

Failing fast: the command never restarts a process, so it stops the cluster when the run
cannot go on, and prints the failed process's reason (the last error line of its log) as
one line, ``fedlora run: client-2 exited 2: data: ...``:
- the coordinator exits: its exit code is the command's (1 if it was killed by a signal);
- a client exits non-zero while the coordinator runs: once the coordinator has not ended
  within :data:`CLIENT_LOSS_GRACE_S` (a client of a run that failed at the coordinator exits
  1 too, and then the coordinator is the one to report), the client is lost; when fewer than
  ``min_clients`` clients are still running no round can be made any more, and the cluster
  is stopped (exit 1); with enough left, one warning line and the run goes on.
A run folder that cannot be written stops the command before anything starts (exit 2).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

from fedlora.common.config import ConfigError, ServerConfig, TLSConfig, dump_config
from fedlora.common.storage import prepare_dir, write_atomic
from fedlora.common.tls import CA, SERVER, make_certs
from fedlora.deploy.exits import Exit
from fedlora.deploy.live import LiveTable
from fedlora.deploy.tokens import write_tokens

COORDINATOR_START_TIMEOUT_S = 300.0
CLIENT_LOSS_GRACE_S = 10.0  # a dead client counts as lost once the coordinator outlives this
CLIENT_EXIT_TIMEOUT_S = 30.0  # after the coordinator ends: time for clients to hear DONE
STOP_TIMEOUT_S = 10.0  # SIGTERM, then SIGKILL
POLL_S = 0.5


class ClusterFailed(RuntimeError):
    """A process the run needs has ended; ``exit`` says which and why."""

    def __init__(self, exit_: Exit):
        super().__init__(str(exit_))
        self.exit = exit_


class Loopback:
    """Every process on 127.0.0.1 of this host: the default topology."""

    coordinator_host = "127.0.0.1"

    def setup(self) -> None: ...

    def teardown(self) -> None: ...

    def wrap(self, name: str, argv: list[str]) -> list[str]:
        return argv

    def limit_cpu(self, name: str, pid: int) -> None: ...

    def threads(self, name: str) -> int:
        return 0

    def describe(self) -> dict:
        return {"topology": "loopback"}


class Cluster:
    def __init__(self, cfg: ServerConfig, client_threads: int, topology=None):
        self.cfg = cfg
        self.topology = topology or Loopback()
        self.run_dir = cfg.run_dir.resolve()
        self.logs = self.run_dir / "logs"
        self.client_threads = client_threads or max(1, (os.cpu_count() or 1) // len(cfg.client_entries()))
        self.procs: dict[str, subprocess.Popen] = {}
        self.failure: Exit | None = None  # why the run failed, when a process of it did

    def _spawn(self, name: str, args: list[str]) -> subprocess.Popen:
        self.logs.mkdir(parents=True, exist_ok=True)
        out = (self.logs / f"{name}.log").open("ab")
        env = dict(os.environ, PYTHONUNBUFFERED="1", HF_HUB_OFFLINE="1")
        argv = self.topology.wrap(name, [sys.executable, "-m", "fedlora.deploy.cli", *args])
        proc = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                env=env)
        out.close()
        self.procs[name] = proc
        self.topology.limit_cpu(name, proc.pid)
        return proc

    def start(self) -> str:
        self.run_dir.mkdir(parents=True, exist_ok=True)
        # the address file is the new coordinator's to write; the records stay: an unfinished
        # run in this folder is resumed (server/journal.py), a finished one refused
        (self.run_dir / "coordinator.json").unlink(missing_ok=True)
        cfg_path = self.run_dir / "server-config.json"
        self.topology.setup()
        client_tls = self._tls()
        self._tokens()
        write_atomic(cfg_path, dump_config(self.cfg) + "\n")
        os.chmod(cfg_path, 0o600)  # it holds the clients' tokens
        self._spawn("coordinator", ["server", "--config", str(cfg_path), "--run-dir", str(self.run_dir),
                                    "--host", self.topology.coordinator_host])
        address = self._wait_address()
        for entry in self.cfg.client_entries():
            threads = self.topology.threads(entry.id) or self.client_threads
            self._spawn(entry.id, ["client", "--server", address, "--id", entry.id, f"--token={entry.token}",
                                   "--threads", str(threads),
                                   "--state-dir", str(self.run_dir / "client-state"), *client_tls(entry.id)])
        write_atomic(self.run_dir / "cluster.json", json.dumps(
            {"address": address, "pids": {n: p.pid for n, p in self.procs.items()},
             **self.topology.describe()}, indent=2) + "\n")
        return address

    def _tokens(self) -> None:
        """A token per client, unless the config has them or is an open run."""
        if self.cfg.open_run:
            return
        tokens = [e.token for e in self.cfg.client_entries()]
        if all(tokens) and len(set(tokens)) == len(tokens):
            return
        entries = write_tokens(self.run_dir / "tokens.yaml", [e.id for e in self.cfg.client_entries()])
        self.cfg = self.cfg.model_copy(update={"clients": entries, "token": ""})

    def _tls(self):
        """Certificates for this cluster (mutual TLS), or plaintext when asked; returns the
        client flags per id."""
        if self.cfg.insecure:
            return lambda cid: ["--insecure"]
        if self.cfg.tls.cert:
            raise ConfigError("config error: tls: `fedlora run` makes its own certificates in "
                              "<run>/certs; tls.* is for `fedlora server` (or pass --insecure)")
        ids = [e.id for e in self.cfg.client_entries()]
        files = make_certs(self.run_dir / "certs", ids, [self.topology.coordinator_host, "localhost"])
        ca = str(files[CA].cert)
        self.cfg = self.cfg.model_copy(update={"tls": TLSConfig(
            cert=str(files[SERVER].cert), key=str(files[SERVER].key), client_ca=ca)})
        return lambda cid: ["--ca-cert", ca, "--cert", str(files[cid].cert), "--key", str(files[cid].key)]

    def _wait_address(self) -> str:
        path = self.run_dir / "coordinator.json"
        end = time.time() + COORDINATOR_START_TIMEOUT_S
        while time.time() < end:
            if path.is_file():
                return json.loads(path.read_text())["address"]
            if (code := self.procs["coordinator"].poll()) is not None:
                raise ClusterFailed(self._exit("coordinator", code))
            time.sleep(0.2)
        raise RuntimeError("the coordinator did not start within "
                           f"{COORDINATOR_START_TIMEOUT_S:g}s: see {self.logs / 'coordinator.log'}")

    def _exit(self, name: str, code: int) -> Exit:
        return Exit.of(name, code, self.logs / f"{name}.log")

    def _clients(self) -> dict[str, subprocess.Popen]:
        return {n: p for n, p in self.procs.items() if n != "coordinator"}

    def wait(self, live: LiveTable) -> int:
        """Until the coordinator exits or the run has lost the clients it needs (the rules in
        the module's docstring); returns the command's exit code, ``failure`` says why."""
        coord = self.procs["coordinator"]
        dead: dict[str, float] = {}  # client -> when it was first seen dead (non-zero exit)
        warned: set[str] = set()
        while coord.poll() is None:
            live.refresh()
            now = time.time()
            for name, p in self._clients().items():
                if p.poll() not in (None, 0):
                    dead.setdefault(name, now)
            lost = sorted((t, n) for n, t in dead.items() if now - t >= CLIENT_LOSS_GRACE_S)
            if lost:
                running = sum(p.poll() is None for p in self._clients().values())
                if running < self.cfg.min_clients:
                    name = lost[0][1]
                    self.failure = self._exit(name, self.procs[name].returncode)
                    return 1
                for _, name in lost:
                    if name not in warned:
                        warned.add(name)
                        print(f"fedlora run: {self._exit(name, self.procs[name].returncode)}; "
                              f"{running} clients still running (min_clients "
                              f"{self.cfg.min_clients}): the run goes on", file=sys.stderr)
            time.sleep(POLL_S)
        live.refresh()
        end = time.time() + CLIENT_EXIT_TIMEOUT_S
        for p in self.procs.values():
            try:
                p.wait(timeout=max(0.1, end - time.time()))
            except subprocess.TimeoutExpired:
                pass
        if coord.returncode != 0:
            self.failure = self._exit("coordinator", coord.returncode)
        return coord.returncode if coord.returncode >= 0 else 1

    def stop(self) -> None:
        for p in self.procs.values():
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
        end = time.time() + STOP_TIMEOUT_S
        for p in self.procs.values():
            try:
                p.wait(timeout=max(0.1, end - time.time()))
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
        self.topology.teardown()


def _interrupt(signum, _frame):
    raise KeyboardInterrupt(signal.Signals(signum).name)


def run_local(cfg: ServerConfig, client_threads: int = 0, live: bool = True, topology=None) -> int:
    prepare_dir(cfg.run_dir.resolve(), "run folder")  # read-only, a file in the way, full: exit 2 now
    cluster = Cluster(cfg, client_threads, topology)
    table = LiveTable(cluster.run_dir, enabled=live)
    code = 1
    signal.signal(signal.SIGTERM, _interrupt)  # SIGTERM tears down like Ctrl-C
    signal.signal(signal.SIGINT, _interrupt)   # explicitly: a background job inherits SIGINT ignored
    try:
        address = cluster.start()
        table.start(f"coordinator {address}, {len(cfg.client_entries())} clients, "
                    f"strategy {cfg.strategy}, run folder {cluster.run_dir}")
        code = cluster.wait(table)
    except KeyboardInterrupt:
        print("interrupted: stopping the cluster", file=sys.stderr)
        code = 130
    except ClusterFailed as e:
        cluster.failure = e.exit
        code = e.exit.code if e.exit.code > 0 else 1
    except (RuntimeError, OSError) as e:
        print(f"fedlora run: {e}", file=sys.stderr)
        code = 1
    finally:
        table.stop()
        cluster.stop()
    table.print_summary()
    if cluster.failure is not None:  # last, so it is the line an operator sees
        print(f"fedlora run: {cluster.failure}", file=sys.stderr, flush=True)
    return code
