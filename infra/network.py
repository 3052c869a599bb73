"""The aggregator's network policy, as pure functions of the stack config.

Flower 1.41 serves the Fleet API (SuperNodes), the Control API (``flwr run/ls/stop`` and
``flwr supernode register``, **no authentication** in open-source Flower) and ``/health`` on ONE
port. So the SuperLink port is open only to the participants' egress addresses and the
operator's address, SSH only to the operator's, and nothing to ``0.0.0.0/0`` unless the stack
says ``allowWorld: true`` (then with a warning). Every cloud module (``infra/aws.py``,
``infra/gcp.py``, ``infra/azure.py``) turns the same :class:`NetworkPolicy` into its own firewall
resources, so the policy is decided and tested once, here.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Sequence
from dataclasses import dataclass

from fedcloud.core.errors import ConfigError
from fedcloud.core.flower import SUPERLINK_PORT
from fedcloud.core.participants import Participant

SSH_PORT = 22
WORLD = "0.0.0.0/0"
# Addresses a public-cloud VM can never see as a client's source: the firewall would admit
# nobody (or, for 100.64/10 and RFC 1918, someone inside the cloud's own network).
_UNROUTABLE = tuple(ipaddress.IPv4Network(n) for n in (
    "0.0.0.0/8", "10.0.0.0/8", "100.64.0.0/10", "127.0.0.0/8", "169.254.0.0/16",
    "172.16.0.0/12", "192.168.0.0/16", "224.0.0.0/4", "240.0.0.0/4",
))
# Wider than this and an "address" is really a provider's whole range: warn.
WIDE_PREFIX = 16


@dataclass(frozen=True)
class Rule:
    """One inbound allow rule: TCP ``port`` from each of ``sources``.

    Attributes:
        role: Short name used in resource names (``ssh``, ``superlink``).
        port: TCP port.
        sources: IPv4 CIDRs, sorted and de-duplicated.
        description: Why the rule exists (shown in the cloud console).
    """

    role: str
    port: int
    sources: tuple[str, ...]
    description: str


@dataclass(frozen=True)
class NetworkPolicy:
    """The aggregator's inbound rules (everything else is denied) and the warnings to show."""

    ssh: Rule
    superlink: Rule
    warnings: tuple[str, ...] = ()

    @property
    def rules(self) -> tuple[Rule, ...]:
        """Both rules, SSH first."""
        return (self.ssh, self.superlink)


def parse_cidr(text: str, key: str) -> ipaddress.IPv4Network:
    """Parse an IPv4 address or CIDR (``203.0.113.7`` means ``/32``).

    Args:
        text: The configured value.
        key: The config key, for the message.

    Raises:
        ConfigError: Not an address, or IPv6 (the firewall rules are IPv4 only).
    """
    try:
        net = ipaddress.ip_network(text.strip() if "/" in text else f"{text.strip()}/32",
                                   strict=False)
    except ValueError:
        raise ConfigError(
            f"{key} is '{text}', not an IP address or CIDR.",
            f"set {key} to an IPv4 address like 203.0.113.7/32.",
        ) from None
    if not isinstance(net, ipaddress.IPv4Network):
        raise ConfigError(
            f"{key} is '{text}', an IPv6 network; the aggregator's firewall rules are IPv4 only.",
            f"set {key} to the IPv4 address this host uses to reach the internet.",
        )
    return net


def _check_routable(net: ipaddress.IPv4Network, key: str, who: str) -> None:
    if any(net.subnet_of(block) for block in _UNROUTABLE):
        raise ConfigError(
            f"{key} is {net}, which is not a public address: a VM in a public cloud sees "
            f"{who}'s public (NAT) address, so the firewall would let nobody in.",
            f"set {key} to the public egress address (for example the output of "
            "'curl -s https://checkip.amazonaws.com' on that host, with /32).",
        )


def network_policy(participants: Sequence[Participant], operator_cidr: str,
                   allow_world: bool) -> NetworkPolicy:
    """Decide the aggregator's inbound rules.

    Args:
        participants: The federation; each needs ``egressCidr`` (its public egress address).
        operator_cidr: ``fedcloud:operatorCidr``: the only SSH source; it also reaches the
            SuperLink (the health check, ``flwr run`` and ``flwr supernode register`` run from
            the operator's machine).
        allow_world: ``fedcloud:allowWorld``: open the SuperLink port (never SSH) to 0.0.0.0/0.

    Returns:
        The SSH rule, the SuperLink rule and warnings.

    Raises:
        ConfigError: A participant has no ``egressCidr``; an address is malformed, IPv6, not
            public, or ``0.0.0.0/0`` without ``allowWorld: true``.
    """
    warnings: list[str] = []
    operator = parse_cidr(operator_cidr, "fedcloud:operatorCidr")
    if operator.prefixlen == 0:
        raise ConfigError(
            "fedcloud:operatorCidr is 0.0.0.0/0: SSH to the aggregator would be open to the "
            "whole internet.",
            "set fedcloud:operatorCidr to your public address with /32 "
            "(pulumi config set fedcloud:operatorCidr 203.0.113.7/32).",
        )
    _check_routable(operator, "fedcloud:operatorCidr", "the operator")
    sources = {str(operator)}
    for i, p in enumerate(participants):
        key = f"fedcloud:participants[{i}].egressCidr"
        if p.egress_cidr is None:
            raise ConfigError(
                f"{key} is not set for participant '{p.name}': the aggregator's firewall admits "
                "only the participants' addresses.",
                f"set {key} to {p.name}'s public egress address (e.g. 203.0.113.7/32).",
            )
        net = parse_cidr(p.egress_cidr, key)
        if net.prefixlen == 0:
            raise ConfigError(
                f"{key} is 0.0.0.0/0: that opens the SuperLink (and its unauthenticated control "
                "API) to the world.",
                f"give {p.name}'s egress address; to open the port to everyone on purpose set "
                "fedcloud:allowWorld to true instead.",
            )
        _check_routable(net, key, p.name)
        if net.prefixlen < WIDE_PREFIX:
            warnings.append(f"{key} is {net}, a range of {net.num_addresses} addresses; "
                            "the SuperLink's control API is open to all of them.")
        sources.add(str(net))
    if operator.prefixlen < WIDE_PREFIX:
        warnings.append(f"fedcloud:operatorCidr is {operator}, a range of "
                        f"{operator.num_addresses} addresses; SSH is open to all of them.")
    if allow_world:
        warnings.append(
            "fedcloud:allowWorld is true: the SuperLink port is open to 0.0.0.0/0, and Flower's "
            "control API (submit/stop runs, register nodes) has no authentication.")
        superlink_sources: tuple[str, ...] = (WORLD,)
    else:
        superlink_sources = tuple(sorted(sources, key=_cidr_key))
    return NetworkPolicy(
        ssh=Rule("ssh", SSH_PORT, (str(operator),), "SSH from the operator only"),
        superlink=Rule("superlink", SUPERLINK_PORT, superlink_sources,
                       "Flower SuperLink (Fleet + Control API): participants and operator"),
        warnings=tuple(warnings),
    )


def _cidr_key(cidr: str) -> tuple[int, int]:
    net = ipaddress.ip_network(cidr)
    return int(net.network_address), net.prefixlen


def open_to_world(sources: Sequence[str]) -> bool:
    """Return whether any source CIDR covers every IPv4 address (``0.0.0.0/0``)."""
    return any(ipaddress.ip_network(s, strict=False).prefixlen == 0 for s in sources)
