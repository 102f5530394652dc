"""A connected client costs the coordinator memory, not a thread: 200 clients' long polls held
open at once over real sockets leave the coordinator process's thread count where it was (a
synchronous gRPC server held a pool thread per long poll: 200 more threads), and every poll
still gets its answer."""

from __future__ import annotations

import time
from pathlib import Path

import grpc

from fedlora.proto.v1 import fedlora_pb2 as pb
from fedlora.proto.v1 import fedlora_pb2_grpc as pbg
from procs import start_server, tail

CLIENTS = 200
CHANNELS = 4
WAIT_S = 20  # each long poll's wait_seconds: held that long, then answered WAIT


def threads(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("Threads:"):
            return int(line.split()[1])
    raise AssertionError("no Threads line")


def test_long_polls_of_200_clients_hold_no_thread_of_the_coordinator(tmp_path, tiny_model):
    run_dir = tmp_path / "run"
    # nobody declares examples, so no round starts: every poll waits its full wait_seconds
    server, address = start_server(run_dir, {"model": str(tiny_model), "clients": CLIENTS,
                                             "rounds": 1, "min_clients": 1})
    channels = [grpc.insecure_channel(address) for _ in range(CHANNELS)]
    try:
        stubs = [pbg.CoordinatorStub(c) for c in channels]
        sessions = [stubs[i % CHANNELS].Join(pb.JoinRequest(client_id=f"client-{i}"), timeout=30).session_id
                    for i in range(CLIENTS)]
        time.sleep(1.0)  # the joins' work is over
        before = threads(server.pid)
        polls = [stubs[i % CHANNELS].GetTask.future(pb.TaskRequest(session_id=s, wait_seconds=WAIT_S),
                                                    timeout=60)
                 for i, s in enumerate(sessions)]
        time.sleep(WAIT_S / 2)
        held = sum(not f.done() for f in polls)
        during = threads(server.pid)
        answers = [f.result(timeout=60).kind for f in polls]
    finally:
        for c in channels:
            c.close()
        server.terminate()
        server.wait(timeout=60)
    log = tail(run_dir / "logs" / "coordinator.log")
    print(f"coordinator threads: {before} before, {during} with {held} polls held")
    assert held == CLIENTS, log  # all of them open at the reading
    assert during - before <= 8, (before, during)
    assert answers == [pb.Task.WAIT] * CLIENTS
