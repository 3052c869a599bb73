"""The aggregator on Azure: resource group, VNet/subnet, NSG, static public IP, NIC and Ubuntu VM.

Everything lives in one resource group per stack, so ``pulumi destroy`` (or deleting the group)
removes it all. The NSG is attached to both the subnet and the NIC; besides its two allow rules
only Azure's default rules apply (which deny inbound from the internet). The image is
Canonical's Ubuntu 24.04 LTS at ``latest``, resolved by Azure when the VM is created.
"""

from __future__ import annotations

import base64

import pulumi
from pulumi_azure_native import compute, network, resources

from infra.component import ADMIN_USER, AggregatorArgs, AggregatorVmBase
from infra.network import Rule

UBUNTU_IMAGE = {"publisher": "Canonical", "offer": "ubuntu-24_04-lts", "sku": "server",
                "version": "latest"}
VNET_CIDR = "10.42.0.0/16"
SUBNET_CIDR = "10.42.0.0/24"
FIRST_PRIORITY = 100


def _security_rule(rule: Rule, priority: int) -> network.SecurityRuleArgs:
    return network.SecurityRuleArgs(
        name=f"allow-{rule.role}", priority=priority, direction="Inbound", access="Allow",
        protocol="Tcp", source_address_prefixes=list(rule.sources), source_port_range="*",
        destination_address_prefix="*", destination_port_range=str(rule.port),
        description=rule.description,
    )


class AggregatorVm(AggregatorVmBase):
    """The Flower SuperLink VM on Azure (type token ``fedcloud:infra:AggregatorVm``)."""

    def __init__(self, name: str, args: AggregatorArgs,
                 opts: pulumi.ResourceOptions | None = None) -> None:
        super().__init__(name, args, opts)
        p = args.placement
        tags = dict(args.tags)
        child = pulumi.ResourceOptions(parent=self)

        group = resources.ResourceGroup(f"{name}-rg", location=p.region, tags=tags, opts=child)
        nsg = network.NetworkSecurityGroup(
            f"{name}-firewall", resource_group_name=group.name, location=p.region, tags=tags,
            security_rules=[_security_rule(r, FIRST_PRIORITY + 10 * i)
                            for i, r in enumerate(args.policy.rules)],
            opts=child,
        )
        vnet = network.VirtualNetwork(
            f"{name}-vnet", resource_group_name=group.name, location=p.region, tags=tags,
            address_space=network.AddressSpaceArgs(address_prefixes=[VNET_CIDR]), opts=child)
        subnet = network.Subnet(
            f"{name}-subnet", resource_group_name=group.name, virtual_network_name=vnet.name,
            address_prefix=SUBNET_CIDR,
            network_security_group=network.NetworkSecurityGroupArgs(id=nsg.id), opts=child)
        address = network.PublicIPAddress(
            f"{name}-address", resource_group_name=group.name, location=p.region, tags=tags,
            public_ip_allocation_method="Static", public_ip_address_version="IPv4",
            sku=network.PublicIPAddressSkuArgs(name="Standard"),
            opts=child)
        public_ip = address.ip_address.apply(lambda ip: ip or "")
        certs = self._declare_certs(name, public_ip)
        nic = network.NetworkInterface(
            f"{name}-nic", resource_group_name=group.name, location=p.region, tags=tags,
            ip_configurations=[network.NetworkInterfaceIPConfigurationArgs(
                name="primary", subnet=network.SubnetArgs(id=subnet.id),
                public_ip_address=network.PublicIPAddressArgs(id=address.id))],
            network_security_group=network.NetworkSecurityGroupArgs(id=nsg.id), opts=child)
        custom_data = self._user_data().apply(
            lambda text: base64.b64encode(text.encode("utf-8")).decode("ascii"))
        vm = compute.VirtualMachine(
            f"{name}-vm", resource_group_name=group.name, location=p.region, tags=tags,
            hardware_profile=compute.HardwareProfileArgs(vm_size=p.instance_type),
            os_profile=compute.OSProfileArgs(
                computer_name="fedcloud-aggregator",
                admin_username=ADMIN_USER,
                custom_data=custom_data,
                linux_configuration=compute.LinuxConfigurationArgs(
                    disable_password_authentication=True,
                    ssh=compute.SshConfigurationArgs(public_keys=[compute.SshPublicKeyArgs(
                        key_data=args.ssh_public_key.strip(),
                        path=f"/home/{ADMIN_USER}/.ssh/authorized_keys")]),
                ),
            ),
            network_profile=compute.NetworkProfileArgs(network_interfaces=[
                compute.NetworkInterfaceReferenceArgs(id=nic.id, primary=True)]),
            storage_profile=compute.StorageProfileArgs(
                image_reference=compute.ImageReferenceArgs(**UBUNTU_IMAGE),
                os_disk=compute.OSDiskArgs(
                    create_option="FromImage", disk_size_gb=args.disk_gb,
                    delete_option="Delete",
                    managed_disk=compute.ManagedDiskParametersArgs(
                        storage_account_type="StandardSSD_LRS")),
            ),
            opts=pulumi.ResourceOptions(parent=self, depends_on=[certs]),
        )
        self._finish(public_ip, vm.vm_id)
