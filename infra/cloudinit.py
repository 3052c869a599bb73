"""The aggregator VM's bootstrap: a cloud-init ``#cloud-config`` that installs and launches.

It holds no logic. It writes the TLS material and a sandboxed systemd unit, creates a venv with
the project's pinned Flower (and the ServerApp's Python dependencies, because the SuperLink runs
with ``--disable-runtime-dependency-installation``), and starts the SuperLink. The unit's command
line is :func:`fedcloud.core.flower.superlink_argv`, the same function the local stack uses:
TLS, SuperNode authentication, ``--database`` and no runtime dependency installation. Telemetry
and the update check are switched off for the unit and for every login shell on the VM.

The server key travels in the user data: Pulumi keeps it as a secret, but the cloud's metadata
service serves user data to any process on the VM and to anyone allowed to describe the
instance. ``infra/README.md`` says so; the key authenticates only this stack's SuperLink.
"""

from __future__ import annotations

import re
import shlex
import tomllib
from dataclasses import dataclass
from functools import cache
from typing import Any

import yaml

from fedcloud.core.config import ROOT
from fedcloud.core.flower import FLOWER_QUIET_ENV, SUPERLINK_PORT, superlink_argv

VENV = "/opt/fedcloud/venv"
TLS_DIR = "/etc/fedcloud/tls"
ENV_FILE = "/etc/fedcloud/flower.env"
STATE_DIR = "/var/lib/fedcloud"
# The ServerApp's embedded model store on the VM (give it to the run config). The operator's SSH
# user sees it as ~/fedcloud-state/registry, where fl.registry.sync.pull_store fetches it from.
AGGREGATOR_REGISTRY_DIR = f"{STATE_DIR}/registry"
OPERATOR_STATE_LINK = "fedcloud-state"
SERVICE = "fedcloud-superlink.service"
SERVICE_USER = "flwr"
ADMIN_USER = "fedcloud"
# torch comes from the CPU wheel index: a plain resolver pulls the multi-GB CUDA build.
TORCH_INDEX = "https://download.pytorch.org/whl/cpu"
# The ServerApp (FedAvg over torch arrays, the MLflow round store, the privacy accountant) runs
# on the SuperLink host.
SERVER_PACKAGES = ("flwr", "numpy", "mlflow", "opacus")


# The unit's sandbox: `systemd-analyze security` rates it 1.4 "OK" (8.9 "EXPOSED" without).
# Left out on purpose: MemoryDenyWriteExecute (torch's oneDNN JIT-compiles CPU kernels; a
# convolution fails with "could not create a primitive" once memory may not become executable);
# SystemCallFilter=~@resources (torch's OpenMP calls sched_setaffinity, its allocator mbind);
# ProcSubset=pid (torch reads /proc/cpuinfo); PrivateNetwork and IPAddressDeny (participants
# connect from their own addresses; the cloud firewall limits them). UMask stays 0022: the
# operator's SSH user pulls the model store over SFTP, so what the ServerApp writes stays readable.
SANDBOX = (
    "UMask=0022",
    "NoNewPrivileges=true",
    "ProtectSystem=strict",
    f"ReadWritePaths={STATE_DIR}",
    "ProtectHome=true",
    "PrivateTmp=true",
    "PrivateDevices=true",
    "ProtectKernelTunables=true",
    "ProtectKernelModules=true",
    "ProtectKernelLogs=true",
    "ProtectControlGroups=true",
    "ProtectClock=true",
    "ProtectHostname=true",
    "ProtectProc=invisible",
    "RestrictAddressFamilies=AF_INET AF_INET6 AF_UNIX",
    "RestrictNamespaces=true",
    "RestrictRealtime=true",
    "RestrictSUIDSGID=true",
    "LockPersonality=true",
    "RemoveIPC=true",
    "PrivateMounts=true",
    "CapabilityBoundingSet=",
    "AmbientCapabilities=",
    "SystemCallArchitectures=native",
    "SystemCallFilter=@system-service",
    "SystemCallFilter=~@privileged",
    # A refused system call fails with EPERM instead of killing the process.
    "SystemCallErrorNumber=EPERM",
)


@dataclass(frozen=True)
class TlsMaterial:
    """PEM texts the SuperLink needs: the deployment CA, its server certificate and key."""

    ca_cert: str
    server_cert: str
    server_key: str


@cache
def pinned_requirements() -> dict[str, str]:
    """Return ``name -> requirement`` for the project's pinned dependencies (from pyproject).

    The VM installs the same pins as the operator's machine: Flower's CLI, SuperLink and
    SuperNodes must share major.minor.
    """
    doc = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))
    out: dict[str, str] = {}
    for req in doc["project"]["dependencies"]:
        name = re.split(r"[<>=!~\[; ]", req, maxsplit=1)[0].lower()
        out[name] = req
    return out


def superlink_unit(port: int = SUPERLINK_PORT) -> str:
    """Return the systemd unit that runs the SuperLink (TLS, node auth, database)."""
    argv = superlink_argv(
        database=f"{STATE_DIR}/superlink.db",
        ca_cert=f"{TLS_DIR}/ca.pem",
        server_cert=f"{TLS_DIR}/server.pem",
        server_key=f"{TLS_DIR}/server.key",
        host="0.0.0.0",
        port=port,
        node_auth=True,
        executable=f"{VENV}/bin/flower-superlink",
    )
    return "\n".join([
        "[Unit]",
        "Description=fedcloud Flower SuperLink (aggregator)",
        "After=network-online.target",
        "Wants=network-online.target",
        "",
        "[Service]",
        f"User={SERVICE_USER}",
        f"Group={SERVICE_USER}",
        f"WorkingDirectory={STATE_DIR}",
        f"EnvironmentFile={ENV_FILE}",
        # The SuperLink starts flower-superexec by name: the venv must be first on PATH.
        f"Environment=PATH={VENV}/bin:/usr/local/bin:/usr/bin:/bin",
        f"ExecStart={shlex.join(argv)}",
        # A dead SuperLink (and the ServerApp it ran: the whole control group is stopped) comes
        # back on the same database; the operator's run then resumes (fl/README.md, "Resume").
        "Restart=always",
        "RestartSec=5",
        "KillMode=control-group",
        *SANDBOX,
        "",
        "[Install]",
        "WantedBy=multi-user.target",
        "",
    ])


def flower_env_file() -> str:
    """Return the environment file shared by the unit and login shells."""
    env = {**FLOWER_QUIET_ENV, "FLWR_HOME": f"{STATE_DIR}/flwr-home"}
    return "".join(f"{k}={v}\n" for k, v in env.items())


@dataclass(frozen=True)
class SshHostKey:
    """The VM's SSH host key (OpenSSH private PEM and public line).

    Generated with the stack's certificates, so its fingerprint is known (and pinned by the
    operator's side) before the VM boots.
    """

    private: str
    public: str


def cloud_config(tls: TlsMaterial, ssh_public_key: str, admin_user: str = ADMIN_USER,
                 port: int = SUPERLINK_PORT, host_key: SshHostKey | None = None) -> str:
    """Return the ``#cloud-config`` user data for the aggregator VM.

    Args:
        tls: The deployment's CA certificate, the SuperLink's certificate and key (PEM).
        ssh_public_key: The operator's OpenSSH public key.
        admin_user: The operator's login on every cloud (the cloud's own default user differs:
            ``ubuntu`` on AWS, the key's user on GCP, the admin user on Azure).
        port: The SuperLink port (the firewall opens the same one).
        host_key: The VM's ed25519 host key (the only one it gets); ``None`` lets the VM
            generate its own (then its fingerprint is unknown in advance).

    Returns:
        The user data text (contains the server and host keys: keep it secret).
    """
    pins = pinned_requirements()
    pip = f"{VENV}/bin/pip"
    files = [
        {"path": f"{TLS_DIR}/ca.pem", "permissions": "0644", "content": tls.ca_cert},
        {"path": f"{TLS_DIR}/server.pem", "permissions": "0644", "content": tls.server_cert},
        {"path": f"{TLS_DIR}/server.key", "permissions": "0600", "content": tls.server_key},
        {"path": ENV_FILE, "permissions": "0644", "content": flower_env_file()},
        {"path": "/etc/profile.d/fedcloud-flower.sh", "permissions": "0644",
         "content": "".join(f"export {k}={v}\n" for k, v in FLOWER_QUIET_ENV.items())},
        {"path": f"/etc/systemd/system/{SERVICE}", "permissions": "0644",
         "content": superlink_unit(port)},
    ]
    doc: dict[str, Any] = {
        "package_update": True,
        "packages": ["python3-venv"],
        "users": [
            "default",
            {"name": admin_user, "shell": "/bin/bash", "sudo": "ALL=(ALL) NOPASSWD:ALL",
             "ssh_authorized_keys": [ssh_public_key.strip()]},
            {"name": SERVICE_USER, "system": True, "shell": "/usr/sbin/nologin",
             "homedir": STATE_DIR},
        ],
        "write_files": files,
        "runcmd": [
            ["mkdir", "-p", f"{STATE_DIR}/flwr-home", AGGREGATOR_REGISTRY_DIR],
            # users/groups run after write_files: hand the key and state over here.
            ["chown", "-R", f"{SERVICE_USER}:{SERVICE_USER}", TLS_DIR, STATE_DIR],
            ["ln", "-sfn", STATE_DIR, f"/home/{admin_user}/{OPERATOR_STATE_LINK}"],
            ["python3", "-m", "venv", VENV],
            [pip, "install", "--quiet", "--index-url", TORCH_INDEX, pins["torch"]],
            [pip, "install", "--quiet", *(pins[p] for p in SERVER_PACKAGES)],
            ["systemctl", "daemon-reload"],
            ["systemctl", "enable", "--now", SERVICE],
        ],
    }
    if host_key is not None:
        # With ssh_keys given, cloud-init generates no host key (ssh_genkeytypes is ignored,
        # and its schema refuses an empty list): the image's keys are deleted, this one written.
        doc["ssh_keys"] = {"ed25519_private": host_key.private, "ed25519_public": host_key.public}
        doc["ssh_deletekeys"] = True
    body = yaml.dump(doc, Dumper=_BlockDumper, sort_keys=False, default_flow_style=False,
                     width=1000)
    return "#cloud-config\n" + body


class _BlockDumper(yaml.SafeDumper):
    """Writes multi-line strings (PEM files, the unit) as readable ``|`` blocks."""


def _str(dumper: yaml.SafeDumper, data: str) -> yaml.ScalarNode:
    style = "|" if "\n" in data else None
    return dumper.represent_scalar("tag:yaml.org,2002:str", data, style=style)


_BlockDumper.add_representer(str, _str)
