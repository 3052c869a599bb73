"""The aggregator's network policy as pure functions (infra/network.py)."""

from __future__ import annotations

import pytest

from fedcloud.core.errors import ConfigError
from fedcloud.core.flower import SUPERLINK_PORT
from fedcloud.core.participants import Location, Participant
from infra.network import SSH_PORT, WORLD, network_policy, open_to_world


def members(*cidrs: str | None) -> tuple[Participant, ...]:
    return tuple(Participant(name=f"p{i}", location=Location(region="aws:us-east-1"),
                             egress_cidr=c, data_dir=None, vms=())
                 for i, c in enumerate(cidrs))


def test_superlink_open_to_exactly_participants_and_operator() -> None:
    policy = network_policy(members("203.0.113.10/32", "198.51.100.20/32"), "192.0.2.5/32",
                            allow_world=False)
    assert policy.superlink.port == SUPERLINK_PORT
    assert policy.superlink.sources == ("192.0.2.5/32", "198.51.100.20/32", "203.0.113.10/32")
    assert policy.ssh.port == SSH_PORT
    assert policy.ssh.sources == ("192.0.2.5/32",)
    assert policy.warnings == ()


def test_duplicate_addresses_are_listed_once_and_bare_ips_become_32() -> None:
    policy = network_policy(members("203.0.113.10", "203.0.113.10/32"), "203.0.113.10",
                            allow_world=False)
    assert policy.superlink.sources == ("203.0.113.10/32",)
    assert policy.ssh.sources == ("203.0.113.10/32",)


def test_allow_world_opens_only_the_superlink_and_warns() -> None:
    policy = network_policy(members("203.0.113.10/32"), "192.0.2.5/32", allow_world=True)
    assert policy.superlink.sources == (WORLD,)
    assert policy.ssh.sources == ("192.0.2.5/32",)  # SSH never follows allowWorld
    assert not open_to_world(policy.ssh.sources)
    assert any("allowWorld is true" in w and "no authentication" in w for w in policy.warnings)


def test_wide_ranges_are_allowed_with_a_warning() -> None:
    policy = network_policy(members("203.0.0.0/12"), "192.0.2.0/24", allow_world=False)
    assert "203.0.0.0/12" in policy.superlink.sources
    assert len(policy.warnings) == 1
    assert "participants[0].egressCidr is 203.0.0.0/12" in policy.warnings[0]


@pytest.mark.parametrize(("egress", "operator", "match"), [
    # a participant without an egress address cannot be let through the firewall
    ((None,), "192.0.2.5/32", r"participants\[0\]\.egressCidr is not set.*To fix: set"),
    # 0.0.0.0/0 as a participant's address is the world in disguise
    (("0.0.0.0/0",), "192.0.2.5/32", r"egressCidr is 0\.0\.0\.0/0.*allowWorld"),
    # malformed address
    (("203.0.113.999/32",), "192.0.2.5/32", r"not an IP address or CIDR.*To fix"),
    # IPv6 is refused explicitly rather than silently dropped
    (("2001:db8::1/128",), "192.0.2.5/32", r"IPv6.*To fix"),
    # a private address is never what a public VM sees
    (("10.1.2.3/32",), "192.0.2.5/32", r"not a public address.*checkip"),
    # the default operatorCidr (loopback) would lock the operator out of the health check
    (("203.0.113.10/32",), "127.0.0.1/32", r"operatorCidr is 127\.0\.0\.1/32.*not a public"),
    # SSH from anywhere is never allowed
    (("203.0.113.10/32",), "0.0.0.0/0", r"operatorCidr is 0\.0\.0\.0/0.*SSH"),
    # malformed operator address
    (("203.0.113.10/32",), "my-laptop", r"operatorCidr is 'my-laptop', not an IP"),
])
def test_bad_addresses_are_rejected_with_the_fix(egress: tuple[str | None, ...], operator: str,
                                                 match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        network_policy(members(*egress), operator, allow_world=False)


def test_open_to_world() -> None:
    assert open_to_world(["192.0.2.5/32", "0.0.0.0/0"])
    # half the internet is a lot, but it is not a single rule open to the world
    assert not open_to_world(["192.0.2.5/32", "0.0.0.0/1"])
