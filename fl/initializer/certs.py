"""Per-deployment TLS material and SuperNode authentication keys, generated with ``cryptography``.

A private CA, the SuperLink's certificate (SAN: the aggregator's address and ``127.0.0.1``) and
one ECDSA P-384 OpenSSH key pair per participant; private keys 0600, every file atomic.
See fl/README.md, "Secure by default".
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, ExtensionOID, NameOID

from fedcloud.core.errors import ConfigError, TrainingError
from fedcloud.core.files import write_atomic

CA_VALID_DAYS = 3650
SERVER_VALID_DAYS = 825
# The SuperLink's own executor (ServerApp launcher) dials 127.0.0.1; it must always be a SAN.
LOOPBACK_SAN = "127.0.0.1"
# An ECDSA key only signs the TLS handshake (ECDHE): keyEncipherment is for RSA key transport,
# keyAgreement for static-ECDH suites that TLS 1.3 and gRPC do not offer (RFC 5480, section 3).
SERVER_KEY_USAGE = x509.KeyUsage(
    digital_signature=True, content_commitment=False, key_encipherment=False,
    data_encipherment=False, key_agreement=False, key_cert_sign=False, crl_sign=False,
    encipher_only=False, decipher_only=False)
PRIVATE_MODE = 0o600
PUBLIC_MODE = 0o644


@dataclass(frozen=True)
class CertPair:
    """A PEM certificate and its PEM private key on disk."""

    cert: Path
    key: Path


@dataclass(frozen=True)
class NodeKey:
    """A SuperNode's authentication key pair (OpenSSH format) on disk."""

    name: str
    private_key: Path
    public_key: Path

    def public_text(self) -> str:
        """Return the one-line OpenSSH public key (``ecdsa-sha2-nistp384 AAAA... name``)."""
        return self.public_key.read_text(encoding="ascii").strip()


@dataclass(frozen=True)
class DeploymentCerts:
    """Everything one deployment needs: CA, SuperLink certificate, node keys by participant."""

    ca: CertPair
    server: CertPair
    nodes: dict[str, NodeKey]


def _new_key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP384R1())


def _pem_key(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def _san_entry(name: str) -> x509.GeneralName:
    try:
        return x509.IPAddress(ipaddress.ip_address(name))
    except ValueError:
        pass
    label = name.strip().rstrip(".")
    if not label or any(c.isspace() or c in "/:@" for c in label):
        raise ConfigError(
            f"'{name}' is neither an IP address nor a DNS name for the SuperLink certificate.",
            "give the aggregator's public IP address or DNS name.",
        )
    return x509.DNSName(label)


def make_ca(out_dir: Path, common_name: str = "fedcloud deployment CA",
            valid_days: int = CA_VALID_DAYS) -> CertPair:
    """Create a self-signed CA (ECDSA P-384) as ``ca.pem`` and ``ca.key`` (0600) in ``out_dir``.

    Args:
        out_dir: Directory to write into (created if missing).
        common_name: Subject CN of the CA.
        valid_days: Validity period.

    Returns:
        The paths of the CA certificate and key.
    """
    key = _new_key()
    name = x509.Name([
        x509.NameAttribute(NameOID.ORGANIZATION_NAME, "fedcloud"),
        x509.NameAttribute(NameOID.COMMON_NAME, common_name),
    ])
    now = _now()
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=valid_days))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(digital_signature=True, key_cert_sign=True, crl_sign=True,
                          content_commitment=False, key_encipherment=False,
                          data_encipherment=False, key_agreement=False, encipher_only=False,
                          decipher_only=False),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()),
                       critical=False)
        .sign(key, hashes.SHA384())
    )
    pair = CertPair(cert=out_dir / "ca.pem", key=out_dir / "ca.key")
    write_atomic(pair.key, _pem_key(key), PRIVATE_MODE)
    write_atomic(pair.cert, cert.public_bytes(serialization.Encoding.PEM), PUBLIC_MODE)
    return pair


def _load_ca(ca: CertPair) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    try:
        cert = x509.load_pem_x509_certificate(ca.cert.read_bytes())
        key = serialization.load_pem_private_key(ca.key.read_bytes(), password=None)
    except (OSError, ValueError) as exc:
        raise TrainingError(
            f"cannot read the deployment CA ({ca.cert}, {ca.key}): {exc}.",
            "delete the certificate directory to generate a new CA (nodes then need the new "
            "ca.pem).",
        ) from None
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        raise TrainingError(f"{ca.key} is not an EC key.",
                            "regenerate the CA with fl.initializer.certs.")
    return cert, key


def _authority_key_id(ca_cert: x509.Certificate,
                      ca_key: ec.EllipticCurvePrivateKey) -> x509.AuthorityKeyIdentifier:
    """The issuer's key identifier: the CA's own SKI when it has one, else derived from its key."""
    try:
        ski = ca_cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
    except x509.ExtensionNotFound:
        return x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key())
    return x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ski)


def make_server_cert(ca: CertPair, out_dir: Path, sans: Sequence[str],
                     valid_days: int = SERVER_VALID_DAYS) -> CertPair:
    """Issue the SuperLink's server certificate from ``ca``.

    Args:
        ca: The deployment CA.
        out_dir: Directory for ``server.pem`` and ``server.key`` (0600).
        sans: The aggregator's public address(es): IPs or DNS names. ``127.0.0.1`` is always
            added.
        valid_days: Validity period.

    Returns:
        The paths of the server certificate and key.

    Raises:
        ConfigError: A SAN is neither an IP address nor a DNS name.
    """
    ca_cert, ca_key = _load_ca(ca)
    names = list(dict.fromkeys([*sans, LOOPBACK_SAN]))
    entries = [_san_entry(n) for n in names]
    key = _new_key()
    now = _now()
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "fedcloud"),
            x509.NameAttribute(NameOID.COMMON_NAME, names[0]),
        ]))
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=valid_days))
        .add_extension(x509.SubjectAlternativeName(entries), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(SERVER_KEY_USAGE, critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()),
                       critical=False)
        .add_extension(_authority_key_id(ca_cert, ca_key), critical=False)
        .sign(ca_key, hashes.SHA384())
    )
    pair = CertPair(cert=out_dir / "server.pem", key=out_dir / "server.key")
    write_atomic(pair.key, _pem_key(key), PRIVATE_MODE)
    write_atomic(pair.cert, cert.public_bytes(serialization.Encoding.PEM), PUBLIC_MODE)
    return pair


def server_cert_sans(cert_path: Path) -> list[str]:
    """Return the SAN entries (IPs and DNS names, as strings) of a PEM certificate."""
    cert = x509.load_pem_x509_certificate(cert_path.read_bytes())
    ext = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    out = [str(ip) for ip in ext.get_values_for_type(x509.IPAddress)]
    out += list(ext.get_values_for_type(x509.DNSName))
    return out


def _server_cert_current(cert_path: Path, wanted: set[str]) -> bool:
    """Whether a server certificate covers ``wanted`` and carries Key Usage and its own SKI.

    Certificates issued before those extensions were added are reissued from the same CA.
    """
    if not wanted.issubset(server_cert_sans(cert_path)):
        return False
    cert = x509.load_pem_x509_certificate(cert_path.read_bytes())
    present = {ext.oid for ext in cert.extensions}
    return {ExtensionOID.KEY_USAGE, ExtensionOID.SUBJECT_KEY_IDENTIFIER} <= present


def make_node_key(out_dir: Path, name: str) -> NodeKey:
    """Create one SuperNode authentication key: ECDSA P-384, OpenSSH format.

    Args:
        out_dir: Directory for ``<name>.key`` (0600) and ``<name>.pub``.
        name: Participant name (also the key comment).

    Returns:
        The key pair's paths.
    """
    key = _new_key()
    private = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.OpenSSH,
        serialization.NoEncryption(),
    )
    public = key.public_key().public_bytes(
        serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH
    )
    node = NodeKey(name=name, private_key=out_dir / f"{name}.key",
                   public_key=out_dir / f"{name}.pub")
    write_atomic(node.private_key, private, PRIVATE_MODE)
    write_atomic(node.public_key, public + f" fedcloud-{name}\n".encode(), PUBLIC_MODE)
    return node


def ensure_deployment_certs(cert_dir: Path, sans: Sequence[str],
                            participants: Iterable[str]) -> DeploymentCerts:
    """Create (or reuse) a deployment's CA, server certificate and node keys.

    Existing files are kept, so node identities survive re-runs (same key = same node id). The
    server certificate is reissued from the same CA when its SANs do not cover ``sans``
    (the aggregator moved) or it lacks Key Usage or its Subject Key Identifier (issued by an
    older version), which needs no change on the nodes.

    Args:
        cert_dir: The deployment's certificate directory (``<state>/certs``).
        sans: The aggregator's public address(es).
        participants: Participant names; one node key each.

    Returns:
        The paths of everything.
    """
    cert_dir.mkdir(parents=True, exist_ok=True)
    os.chmod(cert_dir, 0o700)
    ca = CertPair(cert=cert_dir / "ca.pem", key=cert_dir / "ca.key")
    if not (ca.cert.exists() and ca.key.exists()):
        ca = make_ca(cert_dir)
    server = CertPair(cert=cert_dir / "server.pem", key=cert_dir / "server.key")
    if not (server.cert.exists() and server.key.exists()) or not _server_cert_current(
        server.cert, {*sans, LOOPBACK_SAN}
    ):
        server = make_server_cert(ca, cert_dir, sans)
    nodes: dict[str, NodeKey] = {}
    node_dir = cert_dir / "nodes"
    for name in participants:
        node = NodeKey(name=name, private_key=node_dir / f"{name}.key",
                       public_key=node_dir / f"{name}.pub")
        if not (node.private_key.exists() and node.public_key.exists()):
            node = make_node_key(node_dir, name)
        nodes[name] = node
    return DeploymentCerts(ca=ca, server=server, nodes=nodes)
