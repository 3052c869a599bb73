"""What a dispatch returns: per-participant results, every VM tried and why each failed.

:class:`DispatchResult` is a per-participant map (Fabric's ``GroupResult`` model) of
:class:`ParticipantResult`: the :class:`NodePlacement` when it succeeded, every :class:`VmAttempt`
and why the other VMs were filtered out. :class:`StartFailed` is how a failed start on one VM
travels inside the orchestrator before it becomes a :class:`VmAttempt`.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from fedcloud.core.errors import OrchestratorError
from fedcloud.core.participants import VmSpec


@dataclass(frozen=True)
class NodePlacement:
    """A participant's SuperNode running under its supervisor on one VM.

    Attributes:
        participant: Its name.
        vm: The VM.
        remote_dir: Absolute path of the participant's directory on the VM.
        supervisor_pid: PID (and process group id) of the supervisor.
        runtime_port: The SuperNode's local runtime API port on the VM.
        started_at: Epoch seconds of the start.
    """

    participant: str
    vm: VmSpec
    remote_dir: str
    supervisor_pid: int
    runtime_port: int
    started_at: float


@dataclass(frozen=True)
class VmAttempt:
    """One try of one VM: the stage reached and why it failed (``ok`` when it did not)."""

    vm_id: str
    ok: bool
    stage: str
    reason: str
    elapsed_s: float


class StartFailed(Exception):
    """A start on one VM failed at ``stage`` (internal; becomes a :class:`VmAttempt`)."""

    def __init__(self, stage: str, reason: str, permanent: bool = False) -> None:
        super().__init__(reason)
        self.stage = stage
        self.reason = reason
        self.permanent = permanent


@dataclass(frozen=True)
class ParticipantResult:
    """Where a participant's task went, every VM tried, and why the others were left out.

    Attributes:
        participant: Its name.
        placement: The running SuperNode, when the dispatch succeeded.
        attempts: Every VM tried, in order.
        ineligible: VM id to why the filter left it out.
        error: Why the dispatch failed (``None`` when it succeeded).
    """

    participant: str
    placement: NodePlacement | None
    attempts: tuple[VmAttempt, ...] = ()
    ineligible: Mapping[str, str] = field(default_factory=dict)
    error: str | None = None

    @property
    def ok(self) -> bool:
        """Whether the SuperNode is running and was seen online."""
        return self.placement is not None

    @property
    def vm_id(self) -> str | None:
        """The VM it runs on."""
        return self.placement.vm.id if self.placement else None

    def summary(self) -> str:
        """One line: where it runs, or why not."""
        tried = "; ".join(f"{a.vm_id}: {a.stage}: {a.reason}" for a in self.attempts if not a.ok)
        if self.ok:
            return f"{self.participant}: on {self.vm_id}" + (f" (failed first: {tried})"
                                                             if tried else "")
        return f"{self.participant}: FAILED ({self.error}){'; tried ' + tried if tried else ''}"


@dataclass(frozen=True)
class WatchEvent:
    """What the watcher saw of one participant during training.

    Attributes:
        participant: Its name.
        lost_vm: The VM it ran on when this happened.
        reason: Why, in words.
        result: Where a re-dispatch went (``kind == "redispatched"`` only).
        kind: ``lost`` (its SuperNode died), ``rejoined`` (online again through its
            supervisor) or ``redispatched`` (moved to another VM; ``result`` says where).
        at: Epoch seconds of the observation.
    """

    participant: str
    lost_vm: str
    reason: str
    result: ParticipantResult | None
    kind: str = "redispatched"
    at: float = 0.0


class DispatchResult(dict[str, ParticipantResult]):
    """Per-participant results of one dispatch (Fabric's ``GroupResult`` model).

    ``events`` holds what the watcher saw of these participants during training
    (:class:`WatchEvent`, in order), so the outputs can tell a participant that was lost.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.events: list[WatchEvent] = []

    def events_of(self, participant: str) -> list[WatchEvent]:
        """The watcher's events for one participant."""
        return [e for e in self.events if e.participant == participant]

    @property
    def succeeded(self) -> dict[str, ParticipantResult]:
        """Participants whose SuperNode runs."""
        return {k: v for k, v in self.items() if v.ok}

    @property
    def failed(self) -> dict[str, ParticipantResult]:
        """Participants that dropped out."""
        return {k: v for k, v in self.items() if not v.ok}

    @property
    def ok(self) -> bool:
        """Whether every participant succeeded."""
        return not self.failed

    def placements(self) -> dict[str, NodePlacement]:
        """Participant to placement, for the ones that succeeded."""
        return {k: v.placement for k, v in self.items() if v.placement is not None}

    def raise_on_failure(self) -> None:
        """Raise one :class:`OrchestratorError` naming every participant that failed."""
        if self.failed:
            lines = "; ".join(r.summary() for r in self.failed.values())
            raise OrchestratorError(
                f"{len(self.failed)} of {len(self)} participants could not be dispatched: {lines}",
                "bring an eligible VM of each failed participant up (Active, minimum spec, "
                "reachable over SSH with the pinned host key), or lower fedcloud:orchestrator's "
                "minimum spec.",
            )
