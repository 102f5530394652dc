"""TLS for the coordinator and its clients: certificates for a cluster, gRPC credentials, and
the identity a client certificate proves.

Why a command that makes certificates: a compose or lab cluster has no PKI, and a run that
quietly falls back to plaintext is worse than one that refuses. ``fedlora certs`` makes a CA,
a coordinator certificate for the names clients dial, and one certificate per client whose
common name is the client id, so with mutual TLS the coordinator can hold a client to the id
its certificate names (a client cannot join or upload as another).
"""

from __future__ import annotations

import datetime as dt
import ipaddress
from dataclasses import dataclass
from pathlib import Path

import grpc

CA = "ca"
SERVER = "coordinator"


@dataclass(frozen=True)
class CertFiles:
    cert: Path
    key: Path


def _key():
    from cryptography.hazmat.primitives.asymmetric import ec

    return ec.generate_private_key(ec.SECP256R1())


def _write(folder: Path, name: str, cert, key) -> CertFiles:
    from cryptography.hazmat.primitives import serialization

    c, k = folder / f"{name}.pem", folder / f"{name}.key"
    c.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    k.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                    serialization.NoEncryption()))
    k.chmod(0o600)
    return CertFiles(c, k)


def make_certs(folder: Path, clients: list[str], hosts: list[str], days: int = 365) -> dict[str, CertFiles]:
    """A CA, a coordinator certificate valid for ``hosts`` (DNS names or IPs) and a client
    certificate per id (CN = id), PEM files in ``folder``; returns them by name."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    if not hosts:
        raise ValueError("certs: at least one host name or IP for the coordinator is needed")
    folder.mkdir(parents=True, exist_ok=True)
    now = dt.datetime.now(dt.timezone.utc) - dt.timedelta(minutes=5)
    until = now + dt.timedelta(days=days)

    def name(cn: str) -> x509.Name:
        return x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "fedlora"),
                          x509.NameAttribute(NameOID.COMMON_NAME, cn)])

    ca_key = _key()
    ca = (x509.CertificateBuilder().subject_name(name("fedlora CA")).issuer_name(name("fedlora CA"))
          .public_key(ca_key.public_key()).serial_number(x509.random_serial_number())
          .not_valid_before(now).not_valid_after(until)
          .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
          .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True, crl_sign=True,
                                       content_commitment=False, key_encipherment=False,
                                       data_encipherment=False, key_agreement=False,
                                       encipher_only=False, decipher_only=False), critical=True)
          .sign(ca_key, hashes.SHA256()))
    out = {CA: _write(folder, CA, ca, ca_key)}

    def leaf(cn: str, usage, sans: list[x509.GeneralName]) -> tuple:
        key = _key()
        b = (x509.CertificateBuilder().subject_name(name(cn)).issuer_name(ca.subject)
             .public_key(key.public_key()).serial_number(x509.random_serial_number())
             .not_valid_before(now).not_valid_after(until)
             .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
             .add_extension(x509.ExtendedKeyUsage([usage]), critical=False))
        if sans:
            b = b.add_extension(x509.SubjectAlternativeName(sans), critical=False)
        return b.sign(ca_key, hashes.SHA256()), key

    sans: list[x509.GeneralName] = []
    for h in hosts:
        try:
            sans.append(x509.IPAddress(ipaddress.ip_address(h)))
        except ValueError:
            sans.append(x509.DNSName(h))
    out[SERVER] = _write(folder, SERVER, *leaf(hosts[0], ExtendedKeyUsageOID.SERVER_AUTH, sans))
    for cid in clients:
        out[cid] = _write(folder, cid, *leaf(cid, ExtendedKeyUsageOID.CLIENT_AUTH, [x509.DNSName(cid)]))
    return out


def _read(path: str, what: str) -> bytes:
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"{what}: {p} not found")
    return p.read_bytes()


def server_credentials(cert: str, key: str, client_ca: str = "") -> grpc.ServerCredentials:
    """TLS with the coordinator's certificate; with ``client_ca``, clients must present a
    certificate that CA signed (mutual TLS)."""
    pair = [(_read(key, "tls.key"), _read(cert, "tls.cert"))]
    if client_ca:
        return grpc.ssl_server_credentials(pair, root_certificates=_read(client_ca, "tls.client_ca"),
                                           require_client_auth=True)
    return grpc.ssl_server_credentials(pair)


def channel_credentials(ca: str, cert: str = "", key: str = "") -> grpc.ChannelCredentials:
    """Trust ``ca`` for the coordinator; present ``cert``/``key`` for mutual TLS."""
    return grpc.ssl_channel_credentials(
        root_certificates=_read(ca, "ca_cert"),
        private_key=_read(key, "key") if key else None,
        certificate_chain=_read(cert, "cert") if cert else None)


def peer_common_name(context: grpc.ServicerContext) -> str | None:
    """The common name of the client certificate on this call, if one was presented."""
    values = context.auth_context().get("x509_common_name") or []
    return values[0].decode() if values else None
