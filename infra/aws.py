"""The aggregator on AWS: EC2 instance (Ubuntu AMI lookup), key pair, Elastic IP, security group.

Region: an explicit ``aws.Provider`` in the optimizer's region (the stack needs no ``aws:region``),
with the stack's tags as ``default_tags`` so every taggable resource carries them, and the stack's
``aws:*`` credentials (``fedcloud auth add aws`` sets them) handed over explicitly. The instance
runs in the region's default VPC, reachable only through its security group.
"""

from __future__ import annotations

import pulumi
import pulumi_aws as aws

from infra.component import SPOT, AggregatorArgs, AggregatorVmBase
from infra.network import Rule

# Canonical's AWS account: the owner of the official Ubuntu AMIs.
CANONICAL_OWNER = "099720109477"
UBUNTU_AMI_NAME = "ubuntu/images/hvm-ssd-gp3/ubuntu-noble-24.04-amd64-server-*"


def _ingress(rule: Rule) -> aws.ec2.SecurityGroupIngressArgs:
    return aws.ec2.SecurityGroupIngressArgs(
        protocol="tcp", from_port=rule.port, to_port=rule.port,
        cidr_blocks=list(rule.sources), description=rule.description,
    )


def market_options(market: str) -> aws.ec2.InstanceInstanceMarketOptionsArgs | None:
    """The instance's market arguments: none on demand; on spot a persistent request that stops.

    Stop (not terminate) keeps the EBS root volume with the model store and the SuperLink
    database; the persistent request starts the same instance again when capacity returns.
    """
    if market != SPOT:
        return None  # an unset input: on-demand instances are declared exactly as before
    return aws.ec2.InstanceInstanceMarketOptionsArgs(
        market_type="spot",
        spot_options=aws.ec2.InstanceInstanceMarketOptionsSpotOptionsArgs(
            spot_instance_type="persistent", instance_interruption_behavior="stop"))


class AggregatorVm(AggregatorVmBase):
    """The Flower SuperLink VM on EC2 (type token ``fedcloud:infra:AggregatorVm``)."""

    def __init__(self, name: str, args: AggregatorArgs,
                 opts: pulumi.ResourceOptions | None = None) -> None:
        super().__init__(name, args, opts)
        p = args.placement
        provider = aws.Provider(
            f"{name}-aws", region=p.region,
            default_tags=aws.ProviderDefaultTagsArgs(tags=dict(args.tags)),
            **args.provider_args,  # aws:accessKey/secretKey/token/profile: explicit providers
            opts=pulumi.ResourceOptions(parent=self),  # do not read the stack's aws:* config
        )
        child = pulumi.ResourceOptions(parent=self, provider=provider)

        # Most recent official image at creation; later releases do not replace the VM.
        ami = aws.ec2.get_ami_output(
            most_recent=True, owners=[CANONICAL_OWNER],
            filters=[aws.ec2.GetAmiFilterArgs(name="name", values=[UBUNTU_AMI_NAME]),
                     aws.ec2.GetAmiFilterArgs(name="virtualization-type", values=["hvm"])],
            opts=pulumi.InvokeOutputOptions(parent=self, provider=provider),
        )
        address = aws.ec2.Eip(f"{name}-address", domain="vpc", opts=child)
        certs = self._declare_certs(name, address.public_ip)
        key = aws.ec2.KeyPair(f"{name}-key", public_key=args.ssh_public_key, opts=child)
        sg = aws.ec2.SecurityGroup(
            f"{name}-firewall",
            description="fedcloud aggregator: SSH from the operator, SuperLink from participants",
            ingress=[_ingress(r) for r in args.policy.rules],
            # Outbound stays open: apt, PyPI and the torch wheel index at first boot.
            egress=[aws.ec2.SecurityGroupEgressArgs(protocol="-1", from_port=0, to_port=0,
                                                    cidr_blocks=["0.0.0.0/0"])],
            opts=child,
        )
        vm = aws.ec2.Instance(
            f"{name}-vm",
            ami=ami.id,
            instance_type=p.instance_type,
            key_name=key.key_name,
            vpc_security_group_ids=[sg.id],
            user_data=self._user_data(),
            # cloud-init runs once: a new bootstrap (e.g. a reissued certificate) needs a new VM.
            user_data_replace_on_change=True,
            root_block_device=aws.ec2.InstanceRootBlockDeviceArgs(
                volume_size=args.disk_gb, volume_type="gp3", encrypted=True),
            # IMDSv2 only, one hop: containers on the VM cannot read the user data.
            metadata_options=aws.ec2.InstanceMetadataOptionsArgs(
                http_tokens="required", http_put_response_hop_limit=1),
            tags={"Name": f"{name}-vm"},
            instance_market_options=market_options(args.market),
            opts=pulumi.ResourceOptions.merge(child, pulumi.ResourceOptions(
                ignore_changes=["ami"], depends_on=[certs])),
        )
        aws.ec2.EipAssociation(f"{name}-address-association", instance_id=vm.id,
                               allocation_id=address.allocation_id, opts=child)
        self._finish(address.public_ip, vm.id)
