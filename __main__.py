"""The fedcloud Pulumi program: the aggregator where the optimizer puts it, then training.

``pulumi.Config()`` is read once into a :class:`StackConfig`; the optimizer's choice becomes the
aggregator VM in that cloud; dynamic resources wait for the SuperLink and run the one federation
path (``fedcloud/federation.py``). Outputs: ``aggregator``, ``plan``, ``participants``,
``training``, ``protection``. Bad config fails with ``pulumi.RunError`` naming the key and the fix.
"""

from __future__ import annotations

import json

import pulumi

from fedcloud import federation
from fedcloud.core.errors import ConfigError, FedcloudError
from fedcloud.core.plan import Placement
from fedcloud.core.stack import StackConfig, parse
from fl.initializer.material import issue_certs
from fl.initializer.superlink import health_ok
from infra import aggregator_class
from infra.component import AggregatorArgs
from infra.network import network_policy
from infra.program import provider_config, read_pulumi_config, read_ssh_key, secret_config_keys
from infra.providers import SuperLinkHealth, TrainingDispatch
from optimizer.result import plan_output


def _check_target(cfg: StackConfig) -> None:
    if cfg.target == "local":
        raise ConfigError(
            f"{cfg.source}: fedcloud:aggregator.target is 'local'; the Pulumi program deploys "
            "public-cloud aggregators only.",
            f"run this stack with 'fedcloud up --stack {cfg.stack}', or set "
            "fedcloud:aggregator.target to auto, aws, gcp or azure.")


def _json(values: dict[str, object], secret: bool) -> pulumi.Input[str]:
    """Return ``values`` as JSON text, secret if asked.

    JSON text, not a structured input: Pulumi's wire format would turn every int into a float
    (rounds: 3.0), which the config validation rightly rejects.
    """
    text: pulumi.Input[str] = json.dumps(values, sort_keys=True)
    return pulumi.Output.secret(text) if secret else text


def _dispatch_config(cfg: StackConfig) -> tuple[pulumi.Input[str], pulumi.Input[str]]:
    """Return the stack's values and the part of them that means a new run when it changes.

    The dispatch resource parses the whole stack the way the program did; its diff compares
    only :data:`fedcloud.federation.DISPATCH_KEYS`.
    """
    secret = secret_config_keys()
    values = dict(cfg.raw.values)
    run_key = {k: values[k] for k in federation.DISPATCH_KEYS if k in values}
    return (_json(values, bool(secret)),
            _json(run_key, any(k in secret for k in federation.DISPATCH_KEYS)))


def main() -> None:
    """Declare the stack's resources and outputs."""
    try:
        cfg = parse(read_pulumi_config(pulumi.get_stack()))
        _check_target(cfg)
        planned = federation.validate(cfg)
        policy = network_policy(cfg.participants, cfg.aggregator.operator_cidr,
                                cfg.aggregator.allow_world)
        ssh_public_key, ssh_private_key_path = read_ssh_key(cfg)
        c = planned.choice
        placement = Placement(str(c.cloud), str(c.region), str(c.instance_type))
        vm_class = aggregator_class(placement.cloud)
        provider_args = provider_config(placement.cloud)
    except FedcloudError as exc:
        raise pulumi.RunError(str(exc)) from None
    for warning in policy.warnings:
        pulumi.log.warn(warning)

    vm = vm_class("aggregator", AggregatorArgs(
        placement=placement, policy=policy,
        participants=tuple(p.name for p in cfg.participants),
        ssh_public_key=ssh_public_key, issue_certs=issue_certs,
        tags={**cfg.aggregator.tags, "stack": cfg.stack},
        disk_gb=cfg.aggregator.disk_gb, provider_args=provider_args,
        market=c.market,  # the plan's pick: onDemand or spot
    ))
    health = SuperLinkHealth("superlink-health", address=vm.superlink_address,
                             ca_cert=vm.ca_cert, probe=health_ok,
                             opts=pulumi.ResourceOptions(depends_on=[vm]))
    certs = vm.certs
    config, run_key = _dispatch_config(cfg)
    dispatch = TrainingDispatch("training", {
        "stack": cfg.stack,
        "config": config,
        "run_key": run_key,
        "superlink_address": vm.superlink_address,
        "ca_cert": vm.ca_cert,
        "ca_key": pulumi.Output.secret(certs.ca_key),
        "server_cert": certs.server_cert,
        "server_key": pulumi.Output.secret(certs.server_key),
        "node_keys": pulumi.Output.secret(certs.node_keys),
        # for `pulumi destroy`: pull the VM's model store home over SFTP, host key pinned
        "public_ip": vm.public_ip,
        "ssh_user": vm.ssh_user,
        "ssh_private_key_path": ssh_private_key_path,
        "ssh_host_fingerprint": vm.ssh_host_fingerprint,
    }, run=federation.run_dispatch, pull=federation.pull_registry,
        opts=pulumi.ResourceOptions(depends_on=[health]))

    pulumi.export("aggregator", federation.aggregator_output(
        cloud=placement.cloud, region=placement.region, instance_type=placement.instance_type,
        public_ip=vm.public_ip, superlink_address=vm.superlink_address, ca_cert=vm.ca_cert,
        ssh_user=vm.ssh_user, ssh_host_key_fingerprint=vm.ssh_host_fingerprint))
    pulumi.export("plan", plan_output(planned))
    pulumi.export("participants", dispatch.participants)
    pulumi.export("training", dispatch.training)
    pulumi.export("protection", federation.protection_output(cfg.training))


main()
