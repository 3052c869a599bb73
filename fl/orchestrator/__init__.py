"""Dynamic Task Orchestrator: filter VMs, round-robin from a circular queue, retry on the next VM.

The public API, for ``from fl.orchestrator import ...``; the modules hold the parts
(eligibility, rotation, results, nodes, scripts, orchestrator, watcher, probe, ssh, supernode).
"""

from fl.orchestrator.nodes import NodeLaunch, SuperLinkNodes
from fl.orchestrator.orchestrator import Orchestrator
from fl.orchestrator.results import (
    DispatchResult,
    NodePlacement,
    ParticipantResult,
    VmAttempt,
    WatchEvent,
)
from fl.orchestrator.watcher import Watcher

__all__ = [
    "DispatchResult",
    "NodeLaunch",
    "NodePlacement",
    "Orchestrator",
    "ParticipantResult",
    "SuperLinkNodes",
    "VmAttempt",
    "WatchEvent",
    "Watcher",
]
