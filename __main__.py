"""The fedcloud Pulumi program: the Flower aggregator where the optimizer puts it, then training.

Reads ``pulumi.Config()`` once (:mod:`infra.program`), takes the optimizer's choice of cloud,
region and VM size (or the stack's pin), declares the aggregator through ``infra/`` (the chosen
cloud's SDK only), waits for the SuperLink's health over TLS, dispatches the participants'
SuperNodes and the training run, and exports ``aggregator``, ``plan``, ``participants`` and
``training``. Bad config fails with ``pulumi.RunError`` naming the key and the fix.
"""

from __future__ import annotations

import json

import pulumi

from fedcloud.core.errors import FedcloudError
from infra import aggregator_class
from infra.component import AggregatorArgs
from infra.program import (
    decide,
    load_settings,
    provider_config,
    read_pulumi_config,
    secret_config_keys,
)
from infra.providers import SuperLinkHealth, TrainingDispatch


def main() -> None:
    """Declare the stack's resources and outputs."""
    try:
        settings = load_settings(read_pulumi_config(pulumi.get_stack()), secret_config_keys())
        decision = decide(settings)
        vm_class = aggregator_class(decision.placement.cloud)
        provider_args = provider_config(decision.placement.cloud)
    except FedcloudError as exc:
        raise pulumi.RunError(str(exc)) from None
    for warning in settings.policy.warnings:
        pulumi.log.warn(warning)

    vm = vm_class("aggregator", AggregatorArgs(
        placement=decision.placement,
        policy=settings.policy,
        participants=tuple(p.name for p in settings.participants),
        ssh_public_key=settings.ssh_public_key,
        tags=settings.tags,
        disk_gb=settings.disk_gb,
        provider_args=provider_args,
    ))
    health = SuperLinkHealth("superlink-health", address=vm.superlink_address,
                             ca_cert=vm.ca_cert, opts=pulumi.ResourceOptions(depends_on=[vm]))
    certs = vm.certs
    # JSON text, not a structured input: Pulumi's wire format would turn every int into a float
    # (rounds: 3.0), which the config validation rightly rejects. Secret if any key in it is.
    config: pulumi.Input[str] = json.dumps(settings.dispatch_config, sort_keys=True)
    if settings.dispatch_config_is_secret:
        config = pulumi.Output.secret(config)
    dispatch = TrainingDispatch("training", {
        "stack": settings.raw.stack,
        "config": config,
        "superlink_address": vm.superlink_address,
        "ca_cert": vm.ca_cert,
        "ca_key": pulumi.Output.secret(certs.ca_key),
        "server_cert": certs.server_cert,
        "server_key": pulumi.Output.secret(certs.server_key),
        "node_keys": pulumi.Output.secret(certs.node_keys),
        # for `pulumi destroy`: pull the VM's model store home over SFTP, host key pinned
        "public_ip": vm.public_ip,
        "ssh_user": vm.ssh_user,
        "ssh_private_key_path": settings.ssh_private_key_path,
        "ssh_host_fingerprint": vm.ssh_host_fingerprint,
    }, opts=pulumi.ResourceOptions(depends_on=[health]))

    p = decision.placement
    pulumi.export("aggregator", {
        "cloud": p.cloud,
        "region": p.region,
        "instanceType": p.instance_type,
        "publicIp": vm.public_ip,
        "superlinkAddress": vm.superlink_address,
        "caCert": vm.ca_cert,
        "sshUser": vm.ssh_user,
        "sshHostKeyFingerprint": vm.ssh_host_fingerprint,
    })
    pulumi.export("plan", decision.plan)
    pulumi.export("participants", dispatch.participants)
    pulumi.export("training", dispatch.training)


main()
