"""The deployment's TLS and SSH material as Pulumi state holds it: issue, reuse, write back.

The Pulumi program's certificate resource keeps the CA, the SuperLink's certificate, the node
keys and the aggregator's SSH host key as text; these functions turn that text into the
``fl.initializer.certs`` file layout and back.
"""

from __future__ import annotations

import base64
import hashlib
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from fedcloud.core.files import write_atomic
from fl.initializer.certs import ensure_deployment_certs


def _read(path: Path) -> str:
    return path.read_text(encoding="ascii")


def _restore(cert_dir: Path, olds: Mapping[str, Any]) -> None:
    """Write a previous state's CA, server certificate and node keys back to ``cert_dir``."""
    cert_dir.mkdir(parents=True, exist_ok=True)
    for name, text, mode in (("ca.pem", olds["ca_cert"], 0o644), ("ca.key", olds["ca_key"], 0o600),
                             ("server.pem", olds["server_cert"], 0o644),
                             ("server.key", olds["server_key"], 0o600)):
        write_atomic(cert_dir / name, text.encode("ascii"), mode)
    for name, pair in (olds.get("node_keys") or {}).items():
        write_atomic(cert_dir / "nodes" / f"{name}.key", pair["privateKey"].encode("ascii"), 0o600)
        write_atomic(cert_dir / "nodes" / f"{name}.pub", pair["publicKey"].encode("ascii"), 0o644)


def ssh_host_key() -> tuple[str, str, str]:
    """Return a new ed25519 SSH host key: (private OpenSSH PEM, public line, SHA256 fingerprint).

    The aggregator VM gets it through cloud-init, so the operator's side knows the fingerprint
    before the VM exists and pins it (no trust on first use).
    """
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ed25519

    key = ed25519.Ed25519PrivateKey.generate()
    private = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.OpenSSH,
                                serialization.NoEncryption()).decode("ascii")
    public = key.public_key().public_bytes(serialization.Encoding.OpenSSH,
                                           serialization.PublicFormat.OpenSSH).decode("ascii")
    return private, public, host_key_fingerprint(public)


def host_key_fingerprint(public_line: str) -> str:
    """OpenSSH's ``SHA256:...`` fingerprint of a public key line (``ssh-ed25519 AAAA...``)."""
    blob = base64.b64decode(public_line.split()[1])
    digest = base64.b64encode(hashlib.sha256(blob).digest()).decode("ascii").rstrip("=")
    return f"SHA256:{digest}"


def issue_certs(props: Mapping[str, Any], olds: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """Issue (or, given a previous state, reuse and extend) the stack's TLS material.

    Calls :func:`fl.initializer.certs.ensure_deployment_certs` in a private temporary directory:
    the CA and
    node keys of ``olds`` are kept (same key = same node id), the server certificate is reissued
    when its SANs no longer cover ``props["sans"]``.

    Args:
        props: ``sans`` (the aggregator's public address; 127.0.0.1 is always added) and
            ``participants`` (names; one SuperNode key each).
        olds: The previous outputs, on update.

    Returns:
        The inputs plus ``ca_cert``, ``ca_key``, ``server_cert``, ``server_key``, ``node_keys``
        (``{name: {publicKey, privateKey}}``) and the VM's SSH host key (``ssh_host_key``,
        ``ssh_host_public``, ``ssh_host_fingerprint``), all PEM/OpenSSH text.
    """
    if olds and olds.get("ssh_host_key"):
        host = (olds["ssh_host_key"], olds["ssh_host_public"], olds["ssh_host_fingerprint"])
    else:
        host = ssh_host_key()
    with tempfile.TemporaryDirectory(prefix="fedcloud-certs-") as tmp:
        cert_dir = Path(tmp) / "certs"
        if olds:
            _restore(cert_dir, olds)
        certs = ensure_deployment_certs(cert_dir, list(props["sans"]),
                                        list(props["participants"]))
        return {
            "sans": list(props["sans"]),
            "participants": list(props["participants"]),
            "ca_cert": _read(certs.ca.cert),
            "ca_key": _read(certs.ca.key),
            "server_cert": _read(certs.server.cert),
            "server_key": _read(certs.server.key),
            "node_keys": {name: {"publicKey": _read(k.public_key),
                                "privateKey": _read(k.private_key)}
                         for name, k in certs.nodes.items()},
            "ssh_host_key": host[0],
            "ssh_host_public": host[1],
            "ssh_host_fingerprint": host[2],
        }




def materialize_certs(cert_dir: Path, outs: Mapping[str, Any]) -> None:
    """Write the certificate resource's outputs to ``cert_dir`` in the certificates' layout.

    The operator-side code (``flwr`` CLI, the orchestrator) then finds them where the local stack
    keeps its own (``<stateDir>/certs``), and
    :func:`fl.initializer.certs.ensure_deployment_certs` reuses them.
    """
    _restore(cert_dir, outs)


