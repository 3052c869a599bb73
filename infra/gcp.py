"""The aggregator on GCP: Compute Engine VM (Ubuntu image lookup), static address, VPC, firewall.

A dedicated VPC network, not ``default``: the default network ships rules such as
``default-allow-ssh`` from 0.0.0.0/0 that would defeat the policy. GCP's implied rules deny all
ingress and allow egress; the two firewall rules admit exactly :mod:`infra.network`'s sources
to the VMs tagged :data:`TARGET_TAG`. The project comes from ``gcp:project`` (stack config or
``GOOGLE_PROJECT``); the region and zone from the optimizer.
"""

from __future__ import annotations

import pulumi
import pulumi_gcp as gcp

from infra.component import ADMIN_USER, SPOT, AggregatorArgs, AggregatorVmBase, gcp_labels
from infra.network import Rule

UBUNTU_PROJECT = "ubuntu-os-cloud"
UBUNTU_FAMILY = "ubuntu-2404-lts-amd64"
TARGET_TAG = "fedcloud-aggregator"
SUBNET_CIDR = "10.42.0.0/24"


def scheduling(market: str) -> gcp.compute.InstanceSchedulingArgs | None:
    """The VM's scheduling arguments: none on demand; on spot a Spot VM that stops when reclaimed.

    ``STOP`` (not ``DELETE``) keeps the boot disk with the model store and the SuperLink
    database; Spot VMs cannot restart automatically or live-migrate, so those are stated.
    """
    if market != SPOT:
        return None  # an unset input: on-demand VMs are declared exactly as before
    return gcp.compute.InstanceSchedulingArgs(
        provisioning_model="SPOT", preemptible=True, automatic_restart=False,
        on_host_maintenance="TERMINATE", instance_termination_action="STOP")


class AggregatorVm(AggregatorVmBase):
    """The Flower SuperLink VM on Compute Engine (type token ``fedcloud:infra:AggregatorVm``)."""

    def __init__(self, name: str, args: AggregatorArgs,
                 opts: pulumi.ResourceOptions | None = None) -> None:
        super().__init__(name, args, opts)
        p = args.placement
        labels = gcp_labels(args.tags)
        child = pulumi.ResourceOptions(parent=self)
        invoke = pulumi.InvokeOutputOptions(parent=self)

        # Zone names differ per region (us-east1 has no "-a"): take the first zone that is up.
        zones = gcp.compute.get_zones_output(region=p.region, status="UP", opts=invoke)
        image = gcp.compute.get_image_output(family=UBUNTU_FAMILY, project=UBUNTU_PROJECT,
                                             opts=invoke)
        network = gcp.compute.Network(f"{name}-network", auto_create_subnetworks=False,
                                      description="fedcloud aggregator network", opts=child)
        subnet = gcp.compute.Subnetwork(f"{name}-subnet", region=p.region, network=network.id,
                                        ip_cidr_range=SUBNET_CIDR, opts=child)
        for rule in args.policy.rules:
            self._firewall(name, rule, network)
        address = gcp.compute.Address(f"{name}-address", region=p.region,
                                      address_type="EXTERNAL", network_tier="PREMIUM",
                                      labels=labels, opts=child)
        certs = self._declare_certs(name, address.address)
        vm = gcp.compute.Instance(
            f"{name}-vm",
            machine_type=p.instance_type,
            zone=zones.names[0],
            boot_disk=gcp.compute.InstanceBootDiskArgs(
                initialize_params=gcp.compute.InstanceBootDiskInitializeParamsArgs(
                    image=image.self_link, size=args.disk_gb, type="pd-balanced")),
            network_interfaces=[gcp.compute.InstanceNetworkInterfaceArgs(
                subnetwork=subnet.id,
                access_configs=[gcp.compute.InstanceNetworkInterfaceAccessConfigArgs(
                    nat_ip=address.address, network_tier="PREMIUM")],
            )],
            # Ubuntu's cloud-init reads the "user-data" metadata key on GCE.
            metadata={
                "user-data": self._user_data(),
                "ssh-keys": f"{ADMIN_USER}:{args.ssh_public_key.strip()}",
                "block-project-ssh-keys": "true",
            },
            tags=[TARGET_TAG],
            labels=labels,
            shielded_instance_config=gcp.compute.InstanceShieldedInstanceConfigArgs(
                enable_secure_boot=True, enable_vtpm=True, enable_integrity_monitoring=True),
            allow_stopping_for_update=True,
            scheduling=scheduling(args.market),
            # A reclaimed Spot VM stays stopped: `pulumi up --refresh` starts it again (its disk
            # holds the store and the SuperLink database; the run then resumes).
            desired_status="RUNNING" if args.market == SPOT else None,
            opts=pulumi.ResourceOptions(
                parent=self, depends_on=[certs],
                # The image resolved at creation; a newer Ubuntu image does not replace the VM.
                ignore_changes=["bootDisk.initializeParams.image"]),
        )
        self._finish(address.address, vm.instance_id)

    def _firewall(self, name: str, rule: Rule, network: gcp.compute.Network) -> None:
        gcp.compute.Firewall(
            f"{name}-{rule.role}",
            network=network.id,
            direction="INGRESS",
            allows=[gcp.compute.FirewallAllowArgs(protocol="tcp", ports=[str(rule.port)])],
            source_ranges=list(rule.sources),
            target_tags=[TARGET_TAG],
            description=rule.description,
            opts=pulumi.ResourceOptions(parent=self),
        )
