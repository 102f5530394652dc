"""End to end over real gRPC sockets: nothing waits on an unauthenticated peer, one client
cannot starve the others, and a coordinator serves only with client credentials.

A run of three honest client processes is made while this test process holds 64 silent
Upload streams and 64 silent ProbeUpload streams without a session (and, on plaintext, 64 of
each more under a valid session of its own); the honest clients must still finish the run.
"""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import grpc
import pytest
import yaml

from fedlora.common.tls import channel_credentials, make_certs
from fedlora.common.wire.protocol import SESSION_METADATA
from fedlora.proto.v1 import fedlora_pb2 as pb
from fedlora.proto.v1 import fedlora_pb2_grpc as pbg
from mallory import beat
from procs import cli, finish, logged, records, start_client, start_server, tail, wait_until

HONEST = ["client-0", "client-1", "client-2"]
SILENT = 64
IDLE_S = 5.0  # stream_idle_s of these runs


def _tokens(tmp: Path) -> dict[str, str]:
    """Per-client tokens from `fedlora tokens`, as an operator makes them."""
    out = tmp / "tokens.yaml"
    p = subprocess.run([sys.executable, "-m", "fedlora.deploy.cli", "tokens", "--clients",
                        ",".join([*HONEST, "mallory"]), "--out", str(out)], capture_output=True, text=True)
    assert p.returncode == 0, p.stderr
    return {c["id"]: c["token"] for c in yaml.safe_load(out.read_text())["clients"]}


def _silent(stop: threading.Event):
    """A request stream that sends nothing until ``stop``, then ends."""
    stop.wait()
    return
    yield


def _hold(method, n: int, stop: threading.Event, session: str | None) -> list[grpc.Future]:
    md = ((SESSION_METADATA, session),) if session is not None else None
    return [method.future(_silent(stop), timeout=600, metadata=md) for _ in range(n)]


def _codes(futures: list[grpc.Future]) -> dict[str, int]:
    out: dict[str, int] = {}
    for f in futures:
        try:
            f.result(timeout=30)
            name = "OK"
        except grpc.FutureTimeoutError:
            name = "STILL_OPEN"
        except grpc.RpcError as e:
            name = e.code().name
        out[name] = out.get(name, 0) + 1
    return out


def _join(stub, cid: str, token: str) -> tuple[str, str]:
    try:
        stub.Join(pb.JoinRequest(client_id=cid, token=token), timeout=30, wait_for_ready=True)
        return "OK", ""
    except grpc.RpcError as e:
        return e.code().name, e.details()


@pytest.fixture(scope="module", params=["plaintext", "server-tls"])
def siege(request, tmp_path_factory, tiny_model):
    tmp = tmp_path_factory.mktemp(request.param)
    run_dir = tmp / "run"
    tokens = _tokens(tmp)
    plaintext = request.param == "plaintext"
    config = {
        # seed 7, fraction 0.5: round 1 samples client-0..2, not the session holder "mallory"
        "model": str(tiny_model), "rounds": 1, "min_clients": 3, "deadline_s": 300,
        "seed": 7, "fraction": 0.5,
        "clients": [{"id": c, "token": t} for c, t in tokens.items() if plaintext or c != "mallory"],
        "stream_idle_s": IDLE_S,
        "training": {"max_steps": 2, "batch_size": 16},
    }
    client_flags: tuple[str, ...] = ()
    if plaintext:
        channel_of = grpc.insecure_channel
    else:
        certs = make_certs(tmp / "certs", [], ["127.0.0.1", "localhost"])
        config["tls"] = {"cert": str(certs["coordinator"].cert), "key": str(certs["coordinator"].key)}
        ca = str(certs["ca"].cert)
        client_flags = ("--ca-cert", ca)

        def channel_of(address):
            return grpc.secure_channel(address, channel_credentials(ca, "", ""))
    server, address = start_server(run_dir, config)
    stop = threading.Event()
    held: dict[str, list[grpc.Future]] = {}
    clients = []
    try:
        attacker = pbg.CoordinatorStub(channel_of(address))
        held["upload, no session"] = _hold(attacker.Upload, SILENT, stop, None)
        held["probe, no session"] = _hold(attacker.ProbeUpload, SILENT, stop, None)
        joins = {}
        if plaintext:
            joins = {"unknown id": _join(attacker, "eve", tokens["client-0"]),
                     "wrong token": _join(attacker, "client-0", tokens["client-1"]),
                     "dot-dot id": _join(attacker, "..", "")}
            # a valid client (joined, never planned: see the seed) holding silent streams of its own
            session = attacker.Join(pb.JoinRequest(client_id="mallory", token=tokens["mallory"],
                                                   profile=pb.DeviceProfile(num_examples=100)),
                                    timeout=30).session_id
            threading.Thread(target=beat, args=(attacker, session, stop), daemon=True).start()
            held["upload, own session"] = _hold(attacker.Upload, SILENT, stop, session)
            held["probe, own session"] = _hold(attacker.ProbeUpload, SILENT, stop, session)
            # the idle ones under its session are cancelled before any honest client starts
            wait_until("mallory's idle streams cancelled", lambda: logged(
                run_dir / "logs" / "coordinator.log", "upload stream of client mallory idle for"),
                60, [server])
        time.sleep(1.0)  # the streams are open before any honest client starts
        clients = [start_client(run_dir, address, c, tokens[c], *client_flags) for c in HONEST]
        codes = finish([server, *clients], timeout=400)
    finally:
        stop.set()
        for p in [server, *clients]:
            if p.poll() is None:
                p.kill()
    statuses = {k: _codes(v) for k, v in held.items()}
    return run_dir, codes, statuses, joins


def test_honest_clients_finish_while_silent_streams_are_held(siege):
    run_dir, codes, statuses, _ = siege
    assert codes == [0, 0, 0, 0], f"{statuses}\n" + tail(run_dir / "logs" / "coordinator.log")
    assert [r["round"] for r in records(run_dir, "round")] == [0, 1]


def test_a_stream_without_a_session_is_refused_before_it_is_read(siege):
    _, _, statuses, _ = siege
    assert statuses["upload, no session"] == {"UNAUTHENTICATED": SILENT}
    assert statuses["probe, no session"] == {"UNAUTHENTICATED": SILENT}


def test_a_client_past_its_stream_limit_is_refused_and_its_idle_streams_are_cancelled(siege):
    run_dir, _, statuses, _ = siege
    if "upload, own session" not in statuses:
        pytest.skip("the session holder plays on plaintext only")
    # 2 uploads and 1 probe at a time: held until idle for stream_idle_s, then cancelled
    assert statuses["upload, own session"] == {"RESOURCE_EXHAUSTED": SILENT - 2, "CANCELLED": 2}
    assert statuses["probe, own session"] == {"RESOURCE_EXHAUSTED": SILENT - 1, "CANCELLED": 1}
    log = (run_dir / "logs" / "coordinator.log").read_text()
    assert "upload stream of client mallory idle for" in log and "cancelled" in log


def test_an_unknown_id_and_a_wrong_token_get_the_same_answer(siege):
    _, _, _, joins = siege
    if not joins:
        pytest.skip("checked on plaintext")
    (c1, m1), (c2, m2) = joins["unknown id"], joins["wrong token"]
    assert c1 == c2 == "UNAUTHENTICATED"
    assert m1.replace("'eve'", "ID") == m2.replace("'client-0'", "ID")


def test_a_dot_dot_id_is_refused(siege):
    _, _, _, joins = siege
    if not joins:
        pytest.skip("checked on plaintext")
    code, details = joins["dot-dot id"]
    assert code == "UNAUTHENTICATED" and "unknown client id or wrong token" in details


# ---------------------------------------------------------------- credentials at start


def _server(tmp_path: Path, *args: str, wait: float = 120) -> tuple[int | None, str]:
    """Starts `fedlora server` on plaintext; (exit code, log) once it exits, or (None, log)
    once it is listening (then it is stopped)."""
    run_dir = tmp_path / "run"
    log = tmp_path / "server.log"
    p = cli("server", "--insecure", "--port", "0", "--run-dir", str(run_dir), "--rounds", "1", *args,
            log=log)
    end = time.time() + wait
    try:
        while time.time() < end:
            if p.poll() is not None:
                return p.returncode, log.read_text()
            if (run_dir / "coordinator.json").is_file():
                return None, log.read_text()
            time.sleep(0.1)
        raise TimeoutError(tail(log))
    finally:
        if p.poll() is None:
            p.kill()
            p.wait()


def test_a_coordinator_without_client_credentials_refuses_to_start(tmp_path):
    code, log = _server(tmp_path, "--clients", "2")
    assert code == 2, log
    line, = log.strip().splitlines()
    assert "clients: no client credentials" in line and "open_run" in line and "tls.client_ca" in line


def test_a_shared_token_is_not_a_credential(tmp_path):
    code, log = _server(tmp_path, "--clients", "2", "--token", "shared")
    assert code == 2 and "a shared `token` lets any client join as another" in log


def test_an_open_run_starts_with_a_warning(tmp_path, tiny_model):
    code, log = _server(tmp_path, "--clients", "2", "--open-run", "--model", str(tiny_model))
    assert code is None, log
    assert "OPEN RUN" in log


def test_the_tokens_file_is_the_coordinators_clients_and_its_owners_only(tmp_path, tiny_model):
    tokens = tmp_path / "tokens.yaml"
    assert subprocess.run([sys.executable, "-m", "fedlora.deploy.cli", "tokens", "--clients", "2",
                           "--out", str(tokens)]).returncode == 0
    assert os.stat(tokens).st_mode & 0o777 == 0o600
    code, log = _server(tmp_path, "--config", str(tokens), "--model", str(tiny_model))
    assert code is None, log
    assert "OPEN RUN" not in log
