"""Helpers for the Pulumi program's tests: mock runs of each stack, and per-cloud accessors.

Each stack's program is run once per test session under the SDK's mocks (``infra.preview``)
with ``HOME`` pointing at ``tests/pulumi_home`` (a committed *public* test key at
``~/.ssh/id_ed25519.pub``; its private key was discarded), so the stacks' ``sshPublicKeyPath``
resolves the same on every machine.
"""

from __future__ import annotations

import copy
import json
import os
from collections.abc import Iterator
from contextlib import contextmanager
from functools import cache
from pathlib import Path
from typing import Any

import yaml

from infra.preview import MockRun, Recorded, run_program, stack_config

HERE = Path(__file__).resolve().parents[1]
FIXTURE_HOME = HERE / "pulumi_home"
GOLDEN_DIR = HERE / "golden"
CLOUD_STACKS = ("covid19", "covid19-aws", "covid19-gcp", "covid19-azure")

VM_TYPES = {
    "aws": "aws:ec2/instance:Instance",
    "gcp": "gcp:compute/instance:Instance",
    "azure": "azure-native:compute:VirtualMachine",
}
ADDRESS_TYPES = {
    "aws": "aws:ec2/eip:Eip",
    "gcp": "gcp:compute/address:Address",
    "azure": "azure-native:network:PublicIPAddress",
}


@contextmanager
def operator_home() -> Iterator[None]:
    """Point ``HOME`` (and so ``~``) at the fixture home for the duration."""
    old = os.environ.get("HOME")
    os.environ["HOME"] = str(FIXTURE_HOME)
    try:
        yield
    finally:
        if old is None:
            os.environ.pop("HOME", None)
        else:
            os.environ["HOME"] = old


@cache
def stack_run(name: str, real_certs: bool = False) -> MockRun:
    """Run ``stacks/Pulumi.<name>.yaml`` under mocks once per session."""
    with operator_home():
        from fl.initializer.material import issue_certs

        return run_program(name, stack_config(name), issue=issue_certs if real_certs else None)


def run_with(name: str, **changes: Any) -> MockRun:
    """Run a stack with some ``fedcloud:`` keys replaced (``None`` removes the key)."""
    config = stack_config(name)
    for key, value in changes.items():
        full = f"fedcloud:{key}"
        if value is None:
            config.pop(full, None)
        else:
            config[full] = value if isinstance(value, str) else json.dumps(value)
    with operator_home():
        return run_program(f"{name}-variant", config)


def stack_values(name: str) -> dict[str, Any]:
    """The stack file's ``fedcloud:`` values as plain data (a deep copy)."""
    doc = yaml.safe_load((HERE.parent / "stacks" / f"Pulumi.{name}.yaml").read_text())
    return copy.deepcopy({k.split(":", 1)[1]: v for k, v in doc["config"].items()
                          if k.startswith("fedcloud:")})


def cloud_of(run: MockRun) -> str:
    """The cloud the run's aggregator was declared in."""
    return str(run.outputs["aggregator"]["cloud"])


def vm(run: MockRun) -> Recorded:
    """The aggregator VM resource."""
    return run.one(VM_TYPES[cloud_of(run)])


def user_data(run: MockRun) -> str:
    """The VM's cloud-init user data as text."""
    text = run.user_data()
    assert text is not None, "no aggregator VM declared"
    return text


def user_data_is_secret(run: MockRun) -> bool:
    """Whether the user data reached the engine as a secret."""
    cloud, machine = cloud_of(run), vm(run)
    if cloud == "aws":
        return bool(machine.redacted["userData"] == "[secret]")
    if cloud == "gcp":
        return bool(machine.redacted["metadata"] == "[secret]")
    return bool(machine.redacted["osProfile"] == "[secret]")


def inbound_rules(run: MockRun) -> dict[int, list[str]]:
    """Every inbound allow rule of the aggregator's firewall: port -> sorted sources."""
    cloud = cloud_of(run)
    rules: dict[int, list[str]] = {}
    if cloud == "aws":
        for rule in run.one("aws:ec2/securityGroup:SecurityGroup").inputs["ingress"]:
            assert rule["fromPort"] == rule["toPort"], "port ranges are never opened"
            rules.setdefault(int(rule["fromPort"]), []).extend(rule["cidrBlocks"])
    elif cloud == "gcp":
        for fw in run.of_type("gcp:compute/firewall:Firewall"):
            assert fw.inputs["direction"] == "INGRESS"
            for allow in fw.inputs["allows"]:
                for port in allow["ports"]:
                    rules.setdefault(int(port), []).extend(fw.inputs["sourceRanges"])
    else:
        nsg = run.one("azure-native:network:NetworkSecurityGroup")
        for rule in nsg.inputs["securityRules"]:
            if rule["direction"] == "Inbound" and rule["access"] == "Allow":
                rules.setdefault(int(rule["destinationPortRange"]), []).extend(
                    rule["sourceAddressPrefixes"])
    return {port: sorted(sources) for port, sources in rules.items()}
