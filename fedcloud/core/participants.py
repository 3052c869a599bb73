"""The federation's participants and their private VMs, parsed once from ``fedcloud:participants``.

Shared by the optimizer (where each participant is), the orchestrator (its VMs) and the
aggregator's firewall (its egress address). Cloud/region names are checked against the
catalogue by the optimizer, not here.
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass, field
from pathlib import Path

from fedcloud.core.config import ROOT, ConfigView, RawConfig
from fedcloud.core.files import short

VM_STATES = ("Active", "Inactive")
_FINGERPRINT = re.compile(r"^SHA256:[A-Za-z0-9+/]{43}=?$")
_NAME = re.compile(r"^[a-z0-9][a-z0-9-]{0,39}$")


@dataclass(frozen=True)
class Location:
    """Where a participant is: a cloud region (``aws:us-east-1``) or coordinates."""

    region: str | None = None
    lat: float | None = None
    lon: float | None = None

    @property
    def label(self) -> str:
        """Human-readable label."""
        return self.region or f"{self.lat:.2f},{self.lon:.2f}"


@dataclass(frozen=True)
class VmSpec:
    """One private VM as the participant's private cloud reports it.

    ``host_key_fingerprint`` is OpenSSH's ``SHA256:...`` form; ``None`` only for emulated VMs
    whose keys are generated at ``up`` time, or with the explicit trust-on-first-use policy.
    """

    id: str
    host: str
    port: int
    user: str
    key_path: Path | None
    host_key_fingerprint: str | None
    state: str
    vcpus: float | None
    memory_gb: float | None
    disk_gb: float | None
    venv: str | None = None
    work_dir: str | None = None

    @property
    def active(self) -> bool:
        """Whether the private cloud reports the VM as Active."""
        return self.state == "Active"


@dataclass(frozen=True)
class Participant:
    """A member of the federation: its location, firewall address, data and VMs."""

    name: str
    location: Location
    egress_cidr: str | None
    data_dir: str | None
    vms: tuple[VmSpec, ...]
    rtt_ms: dict[str, float] = field(default_factory=dict)


def _parse_location(view: ConfigView) -> Location:
    loc = view.sub("location")
    loc.check_keys(["region", "lat", "lon"])
    if loc.has("region"):
        region = loc.get_str("region")
        if ":" not in region:
            raise loc.error("region", f"is '{short(region)}' without its cloud",
                            "write it as '<cloud>:<region>', e.g. 'aws:us-east-1'.")
        return Location(region=region)
    if loc.has("lat") or loc.has("lon"):
        return Location(lat=loc.get_float("lat", minimum=-90, maximum=90),
                        lon=loc.get_float("lon", minimum=-180, maximum=180))
    raise view.error("location", "needs either region or lat and lon",
                     "add 'region: <cloud>:<region>' or 'lat:'/'lon:' under location.")


def _parse_cidr(view: ConfigView, name: str) -> str | None:
    if not view.has(name):
        return None
    text = view.get_str(name)
    try:
        net = ipaddress.ip_network(text if "/" in text else f"{text}/32", strict=False)
    except ValueError:
        raise view.error(name, f"is '{short(text)}', not an IP address or CIDR",
                         f"use an address like 203.0.113.7/32 for {view.key(name)}.") from None
    return str(net)


def _parse_vm(view: ConfigView) -> VmSpec:
    view.check_keys(["id", "host", "port", "user", "keyPath", "hostKeyFingerprint", "state",
                     "vcpus", "memoryGb", "diskGb", "venv", "workDir"])
    fingerprint = view.get_str("hostKeyFingerprint", None)
    if fingerprint is not None and not _FINGERPRINT.match(fingerprint):
        raise view.error("hostKeyFingerprint", f"is '{short(fingerprint)}', not an OpenSSH SHA256 "
                         "fingerprint", "run 'ssh-keygen -lf /etc/ssh/ssh_host_ed25519_key.pub' "
                         "on the VM and paste the SHA256:... field.")
    key_path = view.get_str("keyPath", None)
    key = Path(key_path).expanduser() if key_path else None
    if key is not None and not key.is_absolute():
        key = ROOT / key

    def spec(name: str) -> float | None:
        return view.get_float(name, None, minimum=0) if view.has(name) else None

    return VmSpec(
        id=view.get_str("id"),
        host=view.get_str("host"),
        port=view.get_int("port", 22, minimum=1, maximum=65535),
        user=view.get_str("user", "fedcloud"),
        key_path=key,
        host_key_fingerprint=fingerprint,
        state=view.get_str("state", choices=VM_STATES),
        vcpus=spec("vcpus"),
        memory_gb=spec("memoryGb"),
        disk_gb=spec("diskGb"),
        venv=view.get_str("venv", None),
        work_dir=view.get_str("workDir", None),
    )


def _check_hosts(item: ConfigView, name: str, vms: tuple[VmSpec, ...],
                 hosts: dict[tuple[str, int], str]) -> None:
    """Refuse a VM address (host and SSH port) already given to another VM of the federation.

    Two inventory entries for one machine would let the orchestrator count one VM twice (and a
    round-robin "next VM" could be the same host).
    """
    for i, vm in enumerate(vms):
        where = (vm.host.lower(), vm.port)
        owner = f"{name}/{vm.id}"
        if where in hosts:
            raise item.error(f"vms[{i}].host", f"is {short(vm.host)}:{vm.port}, the address of "
                             f"{hosts[where]} too", "give each VM its own host (or SSH port).")
        hosts[where] = owner


def parse_participants(raw: RawConfig) -> tuple[Participant, ...]:
    """Parse and validate ``fedcloud:participants``.

    Raises:
        ConfigError: Missing or malformed participant, location, address or VM entry.
    """
    top = raw.view()
    items = top.items("participants")
    if not items:
        raise top.error("participants", "is empty", "list at least one participant.")
    out: list[Participant] = []
    seen: set[str] = set()
    hosts: dict[tuple[str, int], str] = {}
    for item in items:
        item.check_keys(["name", "location", "egressCidr", "dataDir", "vms", "rttMs"])
        name = item.get_str("name")
        if not _NAME.match(name):
            raise item.error("name", f"is '{short(name)}'; names are lower-case letters, digits "
                             "and dashes (they become resource names)",
                             "rename it, e.g. 'hospital-us'.")
        if name in seen:
            raise item.error("name", f"'{name}' is used twice",
                             "give each participant its own name.")
        seen.add(name)
        rtt: dict[str, float] = {}
        if item.has("rttMs"):
            rtt_view = item.sub("rttMs")
            for region in rtt_view.data:
                rtt[str(region)] = rtt_view.get_float(str(region), minimum=0)
        vms = tuple(_parse_vm(v) for v in item.items("vms", []))
        ids = [vm.id for vm in vms]
        dup = {i for i in ids if ids.count(i) > 1}
        if dup:
            raise item.error("vms", f"repeats VM id {sorted(dup)[0]}", "give each VM its own id.")
        _check_hosts(item, name, vms, hosts)
        out.append(Participant(
            name=name,
            location=_parse_location(item),
            egress_cidr=_parse_cidr(item, "egressCidr"),
            data_dir=item.get_str("dataDir", None),
            vms=vms,
            rtt_ms=rtt,
        ))
    return tuple(out)
