"""The watcher: checks every placement during training and re-dispatches the lost ones.

Gone means: the VM does not answer over SSH, its supervisor is not running, or the SuperLink has
not listed the node online for a grace period (a crashed SuperNode alone is restarted by its
supervisor). The re-dispatch (:meth:`fl.orchestrator.orchestrator.Orchestrator.redispatch`)
uploads the same node key to the next VM, so the node keeps its node id on the SuperLink.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from types import TracebackType
from typing import TYPE_CHECKING

from fl.orchestrator.nodes import ONLINE
from fl.orchestrator.results import NodePlacement, ParticipantResult
from fl.orchestrator.ssh import SshError

if TYPE_CHECKING:
    from fl.orchestrator.orchestrator import Orchestrator

log = logging.getLogger(__name__)

WATCH_INTERVAL_S = 10.0
"""Interval between two watcher checks of every placement."""
OFFLINE_GRACE_S = 90.0
"""A running node may be offline this long (SuperLink heartbeat is 30 s x 2) before the watcher
re-dispatches it."""


@dataclass(frozen=True)
class WatchEvent:
    """A participant's SuperNode was found gone and re-dispatched (``result`` says where)."""

    participant: str
    lost_vm: str
    reason: str
    result: ParticipantResult


class Watcher:
    """Checks the placements during training and re-dispatches a participant that is gone.

    A failed re-dispatch is retried at the next check.

    Args:
        orchestrator: The orchestrator that made the placements.
        placements: Participant to placement; updated in place as nodes move.
        interval_s: Seconds between checks (background thread).
        offline_grace_s: How long a running node may stay offline.
        on_event: Called with each :class:`WatchEvent`.
    """

    def __init__(self, orchestrator: Orchestrator, placements: Mapping[str, NodePlacement],
                 interval_s: float = WATCH_INTERVAL_S, offline_grace_s: float = OFFLINE_GRACE_S,
                 on_event: Callable[[WatchEvent], None] | None = None) -> None:
        self.orchestrator = orchestrator
        self.placements: dict[str, NodePlacement] = dict(placements)
        self.interval_s = interval_s
        self.offline_grace_s = offline_grace_s
        self.on_event = on_event
        self.events: list[WatchEvent] = []
        self._offline_since: dict[str, float] = {}
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def _gone(self, placement: NodePlacement) -> str | None:
        name = placement.participant
        try:
            status = self.orchestrator.status(placement)
        except SshError as exc:
            return f"VM unreachable: {exc.message}"
        if not status.supervisor_alive:
            return "supervisor not running"
        if self.orchestrator.nodes.node_state(name) == ONLINE:
            self._offline_since.pop(name, None)
            return None
        first = self._offline_since.setdefault(name, time.monotonic())
        if time.monotonic() - first >= self.offline_grace_s:
            return f"offline at the SuperLink for {time.monotonic() - first:.0f} s"
        return None

    def check_once(self) -> list[WatchEvent]:
        """Check every placement once (in parallel); re-dispatch the ones that are gone."""
        with self._lock:
            current = dict(self.placements)
        if not current:
            return []
        with ThreadPoolExecutor(max_workers=len(current), thread_name_prefix="watch") as pool:
            gone = dict(zip(current, pool.map(self._gone, current.values()), strict=True))
        events = []
        for name, reason in gone.items():
            if reason is None:
                continue
            lost = current[name]
            result = self.orchestrator.redispatch(lost, reason)
            event = WatchEvent(name, lost.vm.id, reason, result)
            events.append(event)
            self._offline_since.pop(name, None)
            if result.placement is not None:
                with self._lock:
                    self.placements[name] = result.placement
            if self.on_event is not None:
                self.on_event(event)
        self.events.extend(events)
        return events

    def _loop(self) -> None:
        while not self._stop.wait(self.interval_s):
            try:
                self.check_once()
            except Exception:  # keep watching; the error is logged with its traceback
                log.exception("orchestrator watcher check failed")

    def start(self) -> Watcher:
        """Start checking in a background thread."""
        self._thread = threading.Thread(target=self._loop, name="orchestrator-watcher",
                                        daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop the background thread (placements keep running)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join()

    def __enter__(self) -> Watcher:
        return self.start()

    def __exit__(self, et: type[BaseException] | None, ev: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()
