"""The filter: whether a VM may take a participant's task (pure functions).

A VM is eligible when the private cloud reports it Active, its declared spec and its live probe
(:mod:`fl.orchestrator.probe`) meet ``fedcloud:orchestrator``'s minimum, and its ``flwr`` shares
major.minor with the SuperLink. An unreachable VM is not eligible.
"""

from __future__ import annotations

from fedcloud.core.participants import VmSpec
from fedcloud.core.stack import OrchestratorSettings
from fl.orchestrator.probe import ProbeResult, flwr_compatible

LIVE_MEMORY_TOLERANCE = 0.9
"""Live memory may read this fraction of the minimum (the kernel reserves part of the RAM: a
4 GiB VM reports about 3.8 GiB MemTotal)."""


def ineligible_reason(vm: VmSpec, probe: ProbeResult | None, settings: OrchestratorSettings,
                      superlink_flwr: str) -> str | None:
    """Return why ``vm`` cannot take a task, or ``None`` when it is eligible (a pure function).

    Declared figures are checked first (no probe is needed to reject them); then the live probe.
    """
    if not vm.active:
        return f"state is {vm.state}"
    declared = (("vCPU", vm.vcpus, settings.min_vcpus),
                ("GB RAM", vm.memory_gb, settings.min_memory_gb),
                ("GB disk", vm.disk_gb, settings.min_disk_gb))
    for unit, value, minimum in declared:
        if value is not None and value < minimum:
            return f"declares {value:g} {unit}, below the minimum {minimum:g}"
    if probe is None:
        return "not probed"
    if not probe.reachable:
        return f"unreachable: {probe.error}"
    return _live_reason(probe, settings, superlink_flwr)


def _live_reason(probe: ProbeResult, settings: OrchestratorSettings,
                 superlink_flwr: str) -> str | None:
    if probe.vcpus is not None and probe.vcpus < settings.min_vcpus:
        return f"has {probe.vcpus} vCPU live, below the minimum {settings.min_vcpus:g}"
    if (probe.memory_gb is not None
            and probe.memory_gb < settings.min_memory_gb * LIVE_MEMORY_TOLERANCE):
        return (f"has {probe.memory_gb:.2f} GB RAM live, below the minimum "
                f"{settings.min_memory_gb:g}")
    if probe.disk_free_gb is not None and probe.disk_free_gb < settings.min_free_disk_gb:
        return (f"has {probe.disk_free_gb:.1f} GB free in its work dir, below "
                f"{settings.min_free_disk_gb:g}")
    if not probe.flwr:
        return "has no flwr in its venv"
    if not flwr_compatible(probe.flwr, superlink_flwr):
        return f"runs flwr {probe.flwr}, the SuperLink {superlink_flwr} (major.minor must match)"
    return None


def needs_probe(vm: VmSpec, settings: OrchestratorSettings) -> bool:
    """Return whether the declared state and spec leave ``vm`` a candidate worth probing."""
    return ineligible_reason(vm, ProbeResult(vm.id, reachable=True, flwr="0.0"), settings,
                             "0.0") is None
