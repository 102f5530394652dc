"""TLS and identities: mutual TLS binds a client to the id its certificate names; plaintext
only when asked for, on both ends; a missing transport setting is a one-line error."""

from __future__ import annotations

import subprocess
import sys

import grpc
import pytest

from fedlora.common.tls import channel_credentials, make_certs
from fedlora.proto.v1 import fedlora_pb2 as pb
from fedlora.proto.v1 import fedlora_pb2_grpc as pbg
from procs import finish, records, start_client, start_server, tail

CLIENTS = ["client-0", "client-1"]


@pytest.fixture(scope="module")
def tls_run(tmp_path_factory, tiny_model):
    tmp = tmp_path_factory.mktemp("tls")
    certs = make_certs(tmp / "certs", CLIENTS, ["127.0.0.1", "localhost"])
    run_dir = tmp / "run"
    server, address = start_server(run_dir, {
        "model": str(tiny_model), "rounds": 1, "min_clients": 2, "clients": len(CLIENTS),
        "tls": {"cert": str(certs["coordinator"].cert), "key": str(certs["coordinator"].key),
                "client_ca": str(certs["ca"].cert)},
        "training": {"max_steps": 2, "batch_size": 16}})
    ca = str(certs["ca"].cert)
    # before the honest clients: one holding client-1's certificate tries to join as client-0
    stolen = grpc.secure_channel(address, channel_credentials(ca, str(certs["client-1"].cert),
                                                              str(certs["client-1"].key)))
    try:
        pbg.CoordinatorStub(stolen).Join(pb.JoinRequest(client_id="client-0"), timeout=60, wait_for_ready=True)
        impostor = (grpc.StatusCode.OK, "")
    except grpc.RpcError as e:
        impostor = (e.code(), e.details())
    plain = grpc.insecure_channel(address)
    try:
        pbg.CoordinatorStub(plain).Join(pb.JoinRequest(client_id="client-0"), timeout=10)
        plaintext = grpc.StatusCode.OK
    except grpc.RpcError as e:
        plaintext = e.code()
    clients = [start_client(run_dir, address, c, "", "--ca-cert", ca, "--cert", str(certs[c].cert),
                            "--key", str(certs[c].key)) for c in CLIENTS]
    codes = finish([server, *clients], timeout=300)
    assert codes == [0, 0, 0], tail(run_dir / "logs" / "coordinator.log")
    return run_dir, impostor, plaintext


def test_a_mutual_tls_run_completes(tls_run):
    run_dir, _, _ = tls_run
    assert [r["round"] for r in records(run_dir, "round")] == [0, 1]
    assert "mutual TLS" in (run_dir / "logs" / "coordinator.log").read_text()


def test_a_certificate_cannot_join_as_another_client(tls_run):
    _, (code, details), _ = tls_run
    assert code == grpc.StatusCode.PERMISSION_DENIED
    assert "certificate is for 'client-1', not for client 'client-0'" in details


def test_plaintext_cannot_reach_a_tls_coordinator(tls_run):
    _, _, code = tls_run
    assert code == grpc.StatusCode.UNAVAILABLE


def _cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "fedlora.deploy.cli", *args], capture_output=True,
                          text=True, timeout=300)


def test_coordinator_without_tls_or_insecure_is_a_one_line_error(tmp_path, tiny_model):
    p = _cli("server", "--model", str(tiny_model), "--port", "0", "--run-dir", str(tmp_path / "run"))
    assert p.returncode == 2
    assert p.stderr.strip().splitlines()[-1].startswith("fedlora server: config error: tls: the coordinator serves TLS")


def test_client_without_ca_or_insecure_is_a_one_line_error(tmp_path):
    p = _cli("client", "--server", "127.0.0.1:1", "--state-dir", str(tmp_path))
    assert p.returncode == 2
    assert "config error: ca_cert: the coordinator is reached over TLS" in p.stderr


def test_insecure_is_logged_as_a_warning(tmp_path, tiny_model):
    server, _ = start_server(tmp_path / "run", {"model": str(tiny_model), "clients": 1, "min_clients": 1,
                                                "join_timeout_s": 1})
    server.wait(timeout=120)
    assert "WARNING serving PLAINTEXT (--insecure)" in (tmp_path / "run" / "logs" / "coordinator.log").read_text()


def test_certs_command_makes_a_ca_a_coordinator_and_one_certificate_per_client(tmp_path):
    from cryptography import x509

    p = _cli("certs", "--out", str(tmp_path), "--clients", "2", "--hosts", "coordinator,10.0.0.2")
    assert p.returncode == 0, p.stderr
    for name in ("ca", "coordinator", "client-0", "client-1"):
        assert (tmp_path / f"{name}.pem").is_file() and (tmp_path / f"{name}.key").stat().st_mode & 0o077 == 0
    cert = x509.load_pem_x509_certificate((tmp_path / "client-1.pem").read_bytes())
    assert cert.subject.rfc4514_string().startswith("CN=client-1")
    sans = x509.load_pem_x509_certificate((tmp_path / "coordinator.pem").read_bytes()).extensions.get_extension_for_class(
        x509.SubjectAlternativeName).value
    assert sans.get_values_for_type(x509.DNSName) == ["coordinator"]
    assert [str(ip) for ip in sans.get_values_for_type(x509.IPAddress)] == ["10.0.0.2"]
