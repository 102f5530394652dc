"""`fedlora run`'s rule for a cluster that lost processes, on stand-in processes whose exits
are scripted by tick (one tick per poll): no real processes, no waiting."""

import pytest

from fedlora.common.config import ServerConfig
from fedlora.deploy import local


class Clock:
    """The live table's refresh: called once per poll, so it counts the polls."""

    def __init__(self):
        self.tick = 0

    def refresh(self):
        self.tick += 1


class Proc:
    def __init__(self, clock: Clock, dies_at: int | None = None, code: int = 2):
        self.clock, self.dies_at, self.code = clock, dies_at, code
        self.returncode = None

    def poll(self):
        if self.dies_at is not None and self.clock.tick >= self.dies_at:
            self.returncode = self.code
        return self.returncode

    def wait(self, timeout=None):
        return self.poll()


@pytest.fixture
def cluster(tmp_path, monkeypatch):
    monkeypatch.setattr(local, "CLIENT_LOSS_GRACE_S", 0.0)
    monkeypatch.setattr(local, "CLIENT_EXIT_TIMEOUT_S", 0.0)
    monkeypatch.setattr(local, "POLL_S", 0.0)
    cfg = ServerConfig(run_dir=tmp_path, clients=3, min_clients=2, insecure=True)
    c = local.Cluster(cfg, client_threads=1)
    c.logs.mkdir(parents=True)
    for i in range(3):
        (c.logs / f"client-{i}.log").write_text(f"fedlora client: error: data: bad file {i}\n")
    (c.logs / "coordinator.log").write_text(
        "2026-11-23 20:35:30,291 fedlora.server ERROR run folder /r: no space left on device\n")
    return c


def _procs(cluster, clock, coordinator=None, **clients):
    cluster.procs = {"coordinator": coordinator or Proc(clock)}
    for i in range(3):
        cluster.procs[f"client-{i}"] = clients.get(f"c{i}") or Proc(clock)


def test_fewer_running_clients_than_min_clients_stops_the_run(cluster, capsys):
    clock = Clock()
    _procs(cluster, clock, c1=Proc(clock, dies_at=2), c2=Proc(clock, dies_at=5))
    assert cluster.wait(clock) == 1
    assert str(cluster.failure) == "client-1 exited 2: data: bad file 1"  # the first one lost
    warned = capsys.readouterr().err.strip().splitlines()
    assert warned == ["fedlora run: client-1 exited 2: data: bad file 1; 2 clients still running "
                      "(min_clients 2): the run goes on"]
    assert clock.tick == 5  # stopped as soon as a round could no longer be made


def test_the_coordinator_ending_is_the_reason_not_its_clients(cluster):
    clock = Clock()
    coordinator = Proc(clock, dies_at=3, code=1)
    _procs(cluster, clock, coordinator, c0=Proc(clock, dies_at=3, code=1))
    assert cluster.wait(clock) == 1
    assert str(cluster.failure) == "coordinator exited 1: run folder /r: no space left on device"


def test_clients_that_finish_are_not_lost_and_a_complete_run_has_no_failure(cluster):
    clock = Clock()
    _procs(cluster, clock, Proc(clock, dies_at=4, code=0),
           **{f"c{i}": Proc(clock, dies_at=3, code=0) for i in range(3)})
    assert cluster.wait(clock) == 0 and cluster.failure is None


def test_a_killed_coordinator_is_a_failure(cluster):
    clock = Clock()
    _procs(cluster, clock, Proc(clock, dies_at=2, code=-9))
    assert cluster.wait(clock) == 1
    assert str(cluster.failure) == "coordinator was killed by SIGKILL"
