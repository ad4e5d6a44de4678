"""Development certificates (``medtwin certs dev``): a CA, a server certificate and client certificates.

For trying MLLP over TLS with client certificates (mutual TLS) and HTTPS on one machine: a self-signed CA (EC
P-256, 2 years), a server certificate for ``localhost`` / ``127.0.0.1`` / ``::1`` (and any extra names), and one client
certificate per sending facility, its subject common name (and DNS name) the facility as it appears in MSH-4, which
is what the listener checks (:mod:`medtwin.interop.mllp_auth`). Private keys are written mode 0600. Not for
production: there, certificates come from the hospital's PKI.
"""

from __future__ import annotations

import ipaddress
import os
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

__all__ = ["DevCertificates", "make_dev_certificates"]


@dataclass(frozen=True, slots=True)
class DevCertificates:
    """The files written: the CA certificate, the server's certificate and key, each client's (name -> files)."""

    ca_cert: Path
    ca_key: Path
    server_cert: Path
    server_key: Path
    clients: dict[str, tuple[Path, Path]]


def _write(path: Path, data: bytes, private: bool) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600 if private else 0o644)
    with os.fdopen(fd, "wb") as f:
        f.write(data)


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def _issue(
    name: str,
    key: ec.EllipticCurvePrivateKey,
    issuer: x509.Name,
    issuer_key: ec.EllipticCurvePrivateKey,
    *,
    usage: x509.ObjectIdentifier,
    sans: list[x509.GeneralName],
    days: int,
) -> x509.Certificate:
    now = datetime.now(UTC)
    return (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)]))
        .issuer_name(issuer)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(minutes=5))
        .not_valid_after(now + timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
        .add_extension(x509.SubjectAlternativeName(sans), critical=False)
        .sign(issuer_key, hashes.SHA256())
    )


def make_dev_certificates(
    folder: Path, *, clients: list[str], server_names: list[str] | None = None, days: int = 730
) -> DevCertificates:
    """Write a development CA, a server certificate and one client certificate per name in *clients* to *folder*."""
    folder.mkdir(parents=True, exist_ok=True)
    now = datetime.now(UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "medtwin development CA")])
    ca = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(minutes=5))
        .not_valid_after(now + timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                key_cert_sign=True,
                crl_sign=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .sign(ca_key, hashes.SHA256())
    )
    out = DevCertificates(
        ca_cert=folder / "ca.pem",
        ca_key=folder / "ca-key.pem",
        server_cert=folder / "server.pem",
        server_key=folder / "server-key.pem",
        clients={},
    )
    _write(out.ca_cert, ca.public_bytes(serialization.Encoding.PEM), False)
    _write(out.ca_key, _key_pem(ca_key), True)
    names = ["localhost", *(server_names or [])]
    sans: list[x509.GeneralName] = [x509.DNSName(n) for n in dict.fromkeys(names)]
    sans += [x509.IPAddress(ipaddress.ip_address("127.0.0.1")), x509.IPAddress(ipaddress.ip_address("::1"))]
    server_key = ec.generate_private_key(ec.SECP256R1())
    server = _issue(
        "localhost", server_key, ca_name, ca_key, usage=ExtendedKeyUsageOID.SERVER_AUTH, sans=sans, days=days
    )
    _write(out.server_cert, server.public_bytes(serialization.Encoding.PEM), False)
    _write(out.server_key, _key_pem(server_key), True)
    for name in clients:
        key = ec.generate_private_key(ec.SECP256R1())
        cert = _issue(name, key, ca_name, ca_key, usage=ExtendedKeyUsageOID.CLIENT_AUTH, sans=[x509.DNSName(name)],
                      days=days)  # fmt: skip
        safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in name)
        cert_path, key_path = folder / f"client-{safe}.pem", folder / f"client-{safe}-key.pem"
        _write(cert_path, cert.public_bytes(serialization.Encoding.PEM), False)
        _write(key_path, _key_pem(key), True)
        out.clients[name] = (cert_path, key_path)
    return out
