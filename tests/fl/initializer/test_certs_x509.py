"""The deployment's X.509 certificates (fl/initializer/certs.py) as TLS stacks check them.

Extensions are read back with ``cryptography``; ``openssl verify -x509_strict -purpose
sslserver`` checks the chain the way a strict client does; a TLS 1.3 handshake over a socket pair
proves Python's ``ssl`` (OpenSSL) accepts the server certificate for 127.0.0.1.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import shutil
import socket
import ssl
import subprocess
import threading
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from fl.initializer.certs import (
    DeploymentCerts,
    ensure_deployment_certs,
    make_ca,
    write_atomic,
)

SANS = ["203.0.113.7", "agg.example.org"]


def load(path: Path) -> x509.Certificate:
    return x509.load_pem_x509_certificate(path.read_bytes())


def ext(cert: x509.Certificate, kind: type[x509.ExtensionType]) -> x509.Extension:
    return cert.extensions.get_extension_for_class(kind)


@pytest.fixture()
def certs(tmp_path: Path) -> DeploymentCerts:
    return ensure_deployment_certs(tmp_path / "certs", SANS, ["us", "eu"])


def test_server_cert_has_key_usage_eku_ski_and_aki(certs: DeploymentCerts) -> None:
    server, ca = load(certs.server.cert), load(certs.ca.cert)
    assert isinstance(server.public_key(), ec.EllipticCurvePublicKey)
    ku = ext(server, x509.KeyUsage)
    assert ku.critical
    assert ku.value.digital_signature  # signs the (EC)DHE handshake
    assert not (ku.value.key_encipherment or ku.value.key_cert_sign or ku.value.crl_sign)
    assert ext(server, x509.ExtendedKeyUsage).value == x509.ExtendedKeyUsage(
        [ExtendedKeyUsageOID.SERVER_AUTH])
    ski = ext(server, x509.SubjectKeyIdentifier).value
    assert ski == x509.SubjectKeyIdentifier.from_public_key(server.public_key())
    aki = ext(server, x509.AuthorityKeyIdentifier).value
    assert aki.key_identifier == ext(ca, x509.SubjectKeyIdentifier).value.digest
    basic = ext(server, x509.BasicConstraints)
    assert basic.critical and basic.value.ca is False
    assert server.issuer == ca.subject


def test_ca_has_cert_sign_crl_sign_and_ski(certs: DeploymentCerts) -> None:
    ca = load(certs.ca.cert)
    ku = ext(ca, x509.KeyUsage)
    assert ku.critical and ku.value.key_cert_sign and ku.value.crl_sign
    assert ext(ca, x509.SubjectKeyIdentifier).value == \
        x509.SubjectKeyIdentifier.from_public_key(ca.public_key())
    basic = ext(ca, x509.BasicConstraints)
    assert basic.critical and basic.value.ca is True and basic.value.path_length == 0


def openssl_verify(ca: Path, cert: Path) -> subprocess.CompletedProcess[str]:
    openssl = shutil.which("openssl")
    if openssl is None:
        pytest.fail("openssl is not installed: `make test` installs it (apt-get install openssl).")
    return subprocess.run([openssl, "verify", "-x509_strict", "-purpose", "sslserver",
                           "-CAfile", str(ca), str(cert)], capture_output=True, text=True,
                          timeout=60)


def test_openssl_verifies_the_server_cert_strictly(certs: DeploymentCerts,
                                                   tmp_path: Path) -> None:
    ok = openssl_verify(certs.ca.cert, certs.server.cert)
    assert ok.returncode == 0 and ok.stdout.strip().endswith(": OK"), ok.stdout + ok.stderr
    other = make_ca(tmp_path / "other")
    refused = openssl_verify(other.cert, certs.server.cert)
    assert refused.returncode != 0


def test_tls_handshake_for_loopback_with_the_deployment_ca(certs: DeploymentCerts) -> None:
    server_ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server_ctx.minimum_version = ssl.TLSVersion.TLSv1_3
    server_ctx.load_cert_chain(certs.server.cert, certs.server.key)
    client_ctx = ssl.create_default_context(cafile=str(certs.ca.cert))
    client_ctx.verify_flags |= ssl.VERIFY_X509_STRICT
    left, right = socket.socketpair()
    errors: list[BaseException] = []

    def serve() -> None:
        try:
            with server_ctx.wrap_socket(right, server_side=True) as tls:
                tls.sendall(tls.recv(4))
        except BaseException as exc:  # re-raised in the test thread
            errors.append(exc)

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    with client_ctx.wrap_socket(left, server_hostname="127.0.0.1") as tls:
        tls.sendall(b"ping")
        assert tls.recv(4) == b"ping"
        assert tls.version() == "TLSv1.3"
    thread.join(10)
    assert not errors, errors


def legacy_server_cert(certs: DeploymentCerts) -> None:
    """Overwrite the server certificate with one lacking Key Usage and SKI (same key, same CA)."""
    ca_cert = load(certs.ca.cert)
    ca_key = serialization.load_pem_private_key(certs.ca.key.read_bytes(), password=None)
    key = serialization.load_pem_private_key(certs.server.key.read_bytes(), password=None)
    assert isinstance(ca_key, ec.EllipticCurvePrivateKey)
    assert isinstance(key, ec.EllipticCurvePrivateKey)
    now = dt.datetime.now(dt.UTC)
    names = [x509.IPAddress(ipaddress.ip_address("203.0.113.7")),
             x509.DNSName("agg.example.org"),
             x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
    cert = (x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, SANS[0])]))
            .issuer_name(ca_cert.subject).public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(minutes=5))
            .not_valid_after(now + dt.timedelta(days=30))
            .add_extension(x509.SubjectAlternativeName(names), critical=False)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .sign(ca_key, hashes.SHA384()))
    write_atomic(certs.server.cert, cert.public_bytes(serialization.Encoding.PEM), 0o644)


def test_rerun_reuses_current_material_and_upgrades_a_legacy_server_cert(
        certs: DeploymentCerts, tmp_path: Path) -> None:
    cert_dir = tmp_path / "certs"
    before = {p: p.read_bytes() for p in (certs.ca.cert, certs.ca.key, certs.server.cert,
                                          certs.server.key, *(n.private_key for n in
                                                              certs.nodes.values()))}
    again = ensure_deployment_certs(cert_dir, SANS, ["us", "eu"])
    assert {p: p.read_bytes() for p in before} == before  # nothing reissued
    legacy_server_cert(again)
    with pytest.raises(x509.ExtensionNotFound):
        ext(load(again.server.cert), x509.KeyUsage)
    upgraded = ensure_deployment_certs(cert_dir, SANS, ["us", "eu"])
    assert ext(load(upgraded.server.cert), x509.KeyUsage).value.digital_signature
    assert ext(load(upgraded.server.cert), x509.SubjectKeyIdentifier)
    # the CA and the node keys are kept: participants need nothing new
    for path in (certs.ca.cert, certs.ca.key, *(n.private_key for n in certs.nodes.values())):
        assert path.read_bytes() == before[path], path
    assert openssl_verify(upgraded.ca.cert, upgraded.server.cert).returncode == 0
