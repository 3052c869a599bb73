"""What the three cloud modules share: the typed args, the component base, certificates, user data.

``infra/aws.py``, ``infra/gcp.py`` and ``infra/azure.py`` each define ``AggregatorVm`` with the
constructor ``AggregatorVm(name, args, opts=None)`` and the outputs of :class:`AggregatorVmBase`.
The order inside each is the same, and it solves the certificate's chicken-and-egg: a **static
public address** is declared first; the stack's certificates (SAN = that address + 127.0.0.1)
take its value; the VM's user data takes the certificates; the VM then gets the address.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import pulumi

from fedcloud.core.flower import SUPERLINK_PORT
from fedcloud.core.plan import Placement
from infra.cloudinit import ADMIN_USER, SshHostKey, TlsMaterial, cloud_config
from infra.network import NetworkPolicy
from infra.providers import DeploymentCerts, IssueFn

TYPE_TOKEN = "fedcloud:infra:AggregatorVm"
DISK_GB = 30
ON_DEMAND, SPOT = "onDemand", "spot"


@dataclass(frozen=True)
class AggregatorArgs:
    """Everything a cloud module needs; the same for the three clouds.

    Attributes:
        placement: Cloud, region and instance type.
        policy: Inbound rules (see :mod:`infra.network`).
        participants: Participant names (one SuperNode key each).
        ssh_public_key: The operator's OpenSSH public key (one line).
        issue_certs: Issues the deployment's TLS and SSH material (the certificate resource).
        tags: Tags (labels) put on every resource that takes them.
        port: The SuperLink port.
        disk_gb: Boot disk size.
        provider_args: Credentials for an explicit provider (``infra.program.provider_config``).
        market: ``onDemand`` or ``spot`` (the plan's pick; AWS and GCP only): a spot VM stops
            when reclaimed and keeps its disk, so the run resumes (infra/README.md, "Spot").
    """

    placement: Placement
    policy: NetworkPolicy
    participants: tuple[str, ...]
    ssh_public_key: str
    issue_certs: IssueFn
    tags: Mapping[str, str] = field(default_factory=dict)
    port: int = SUPERLINK_PORT
    disk_gb: int = DISK_GB
    provider_args: Mapping[str, Any] = field(default_factory=dict)
    market: str = ON_DEMAND

    def __post_init__(self) -> None:
        if self.market not in (ON_DEMAND, SPOT):
            raise ValueError(f"market is {self.market!r}, not {ON_DEMAND!r} or {SPOT!r}")
        if self.market == SPOT and self.placement.cloud not in ("aws", "gcp"):
            raise ValueError(f"no spot declaration for {self.placement.cloud}")


def gcp_labels(tags: Mapping[str, str]) -> dict[str, str]:
    """Return ``tags`` as GCP labels (lower-case letters, digits, ``_`` and ``-``; 63 chars)."""
    def clean(text: str) -> str:
        return re.sub(r"[^a-z0-9_-]", "-", text.lower())[:63]
    return {clean(k): clean(v) for k, v in tags.items()}


class AggregatorVmBase(pulumi.ComponentResource):
    """The aggregator VM component: its outputs and the steps common to every cloud.

    Attributes:
        public_ip: The static public address.
        superlink_address: ``ip:port`` the participants and the operator connect to.
        ca_cert: The stack's CA certificate (PEM) that SuperNodes and ``flwr`` trust.
        certs: The certificate resource (server key, CA key and node keys are secrets).
        instance_id: The cloud's id of the VM.
        ssh_user: The operator's login on the VM.
        ssh_host_fingerprint: The VM's SSH host key fingerprint (``SHA256:...``), known before
            it boots: pin it (``known_hosts``) instead of trusting on first use.
    """

    public_ip: pulumi.Output[str]
    superlink_address: pulumi.Output[str]
    ca_cert: pulumi.Output[str]
    certs: DeploymentCerts
    instance_id: pulumi.Output[str]
    ssh_host_fingerprint: pulumi.Output[str]

    def __init__(self, name: str, args: AggregatorArgs,
                 opts: pulumi.ResourceOptions | None = None) -> None:
        super().__init__(TYPE_TOKEN, name, None, opts)
        self.args = args
        self.ssh_user = ADMIN_USER

    def _declare_certs(self, name: str, public_ip: pulumi.Output[str]) -> DeploymentCerts:
        self.certs = DeploymentCerts(
            f"{name}-certs", sans=public_ip.apply(lambda ip: [ip]),
            participants=list(self.args.participants), issue=self.args.issue_certs,
            opts=pulumi.ResourceOptions(parent=self),
        )
        return self.certs

    def _user_data(self) -> pulumi.Output[str]:
        """The ``#cloud-config`` text, secret (it carries the server key)."""
        port, key = self.args.port, self.args.ssh_public_key
        c = self.certs
        text = pulumi.Output.all(c.ca_cert, c.server_cert, c.server_key, c.ssh_host_key,
                                 c.ssh_host_public).apply(
            lambda v: cloud_config(TlsMaterial(v[0], v[1], v[2]), key, ADMIN_USER, port,
                                   SshHostKey(v[3], v[4])))
        return pulumi.Output.secret(text)

    def _finish(self, public_ip: pulumi.Output[str], instance_id: pulumi.Output[str]) -> None:
        self.public_ip = public_ip
        self.instance_id = instance_id
        port = self.args.port
        self.superlink_address = public_ip.apply(lambda ip: f"{ip}:{port}")
        self.ca_cert = self.certs.ca_cert
        self.ssh_host_fingerprint = self.certs.ssh_host_fingerprint
        p = self.args.placement
        self.register_outputs({
            "cloud": p.cloud, "region": p.region, "instanceType": p.instance_type,
            "publicIp": self.public_ip, "superlinkAddress": self.superlink_address,
            "caCert": self.ca_cert, "instanceId": self.instance_id, "sshUser": ADMIN_USER,
            "sshHostKeyFingerprint": self.ssh_host_fingerprint,
        })
