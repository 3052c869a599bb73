"""The watcher: checks every placement during training and re-dispatches the lost ones.

Gone means: the VM does not answer over SSH, its supervisor is not running, its SuperNode died
and is not online again within ``rejoin_grace_s`` (the supervisor's restart comes first), or the
node is offline for ``offline_grace_s``. A re-dispatch uploads the same node key to the next VM,
so the node keeps its id. Events: lost, rejoined, redispatched (fl/README.md, "Watch").
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from types import TracebackType
from typing import TYPE_CHECKING

from fl.orchestrator.nodes import ONLINE, SUPERVISED_REJOIN_S
from fl.orchestrator.results import NodePlacement, WatchEvent
from fl.orchestrator.ssh import SshError

if TYPE_CHECKING:
    from fl.orchestrator.orchestrator import Orchestrator

log = logging.getLogger(__name__)

WATCH_INTERVAL_S = 10.0
"""Interval between two watcher checks of every placement."""
OFFLINE_GRACE_S = 90.0
"""A running node may be offline this long (SuperLink heartbeat is 30 s x 2) before the watcher
re-dispatches it."""


class Watcher:
    """Checks the placements during training and re-dispatches a participant that is gone.

    A failed re-dispatch is retried at the next check.

    Args:
        orchestrator: The orchestrator that made the placements.
        placements: Participant to placement; a mutable mapping passed here is updated in
            place as nodes move (so the caller's ``stop(placements)`` stops the moved nodes).
        interval_s: Seconds between checks (background thread).
        offline_grace_s: How long a running node may stay offline.
        on_event: Called with each :class:`WatchEvent`.
        rejoin_grace_s: How long after its SuperNode died a node may take to be online again
            through its supervisor before it is re-dispatched.
    """

    def __init__(self, orchestrator: Orchestrator, placements: Mapping[str, NodePlacement],
                 interval_s: float = WATCH_INTERVAL_S, offline_grace_s: float = OFFLINE_GRACE_S,
                 on_event: Callable[[WatchEvent], None] | None = None,
                 rejoin_grace_s: float = SUPERVISED_REJOIN_S) -> None:
        self.orchestrator = orchestrator
        self.placements: dict[str, NodePlacement] = (
            placements if isinstance(placements, dict) else dict(placements))
        self.interval_s = interval_s
        self.offline_grace_s = offline_grace_s
        self.rejoin_grace_s = rejoin_grace_s
        self.on_event = on_event
        self.events: list[WatchEvent] = []
        self._offline_since: dict[str, float] = {}
        self._exits: dict[str, int] = {}
        self._lost_at: dict[str, float] = {}
        self._noted: list[WatchEvent] = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def _note(self, kind: str, placement: NodePlacement, reason: str) -> None:
        event = WatchEvent(placement.participant, placement.vm.id, reason, None, kind, time.time())
        with self._lock:
            self._noted.append(event)

    def _died(self, placement: NodePlacement, exits: int, last_exit_at: float | None,
              ) -> str | None:
        """Follow a SuperNode that died under its supervisor: back in time, or gone."""
        name = placement.participant
        if name not in self._exits:
            # First check: exits before it (a start retried during the dispatch) count only
            # when the node has not been online since the last of them.
            fresh = (exits == 0 or last_exit_at is None
                     or self.orchestrator.nodes.node_state(name, since=last_exit_at) == ONLINE)
            self._exits[name] = exits if fresh else 0
        seen = self._exits[name]
        if exits > seen and name not in self._lost_at:
            now = time.time()
            lost = min(now, last_exit_at) if last_exit_at else now
            self._lost_at[name] = lost
            self._note("lost", placement, f"SuperNode exited ({exits - seen} exit(s)); "
                       "waiting for its supervisor's restart")
        self._exits[name] = exits
        lost_at = self._lost_at.get(name)
        if lost_at is None:
            return None
        if self.orchestrator.nodes.node_state(name, since=lost_at) == ONLINE:
            del self._lost_at[name]
            self._note("rejoined", placement,
                       f"online again {time.time() - lost_at:.0f} s after its SuperNode died")
            return None
        if time.time() - lost_at >= self.rejoin_grace_s:
            return (f"SuperNode died and not online again within {self.rejoin_grace_s:g} s "
                    "(its supervisor's restarts were refused or failed)")
        return None

    def _gone(self, placement: NodePlacement) -> str | None:
        name = placement.participant
        try:
            status = self.orchestrator.status(placement)
        except SshError as exc:
            return f"VM unreachable: {exc.message}"
        if not status.supervisor_alive:
            return "supervisor not running"
        died = self._died(placement, status.exits, status.last_exit_at)
        if died is not None or name in self._lost_at:
            return died
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
        with self._lock:
            events, self._noted = self._noted, []
        for name, reason in gone.items():
            if reason is None:
                continue
            lost = current[name]
            result = self.orchestrator.redispatch(lost, reason)
            events.append(WatchEvent(name, lost.vm.id, reason, result, "redispatched",
                                     time.time()))
            self._offline_since.pop(name, None)
            self._lost_at.pop(name, None)
            self._exits.pop(name, None)
            if result.placement is not None:
                with self._lock:
                    self.placements[name] = result.placement
        for event in events:
            self.orchestrator.record_event(event)
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
