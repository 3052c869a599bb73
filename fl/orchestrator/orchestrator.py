"""Dynamic Task Orchestrator: a healthy VM for every participant, round-robin, with retries.

For each participant in parallel: filter the eligible VMs, take the next in its circular queue,
start the supervised SuperNode over SSH, confirm it online, else retry on the next VM with
back-off; a watcher re-dispatches a lost node. See fl/README.md, "Dynamic Task Orchestrator".
"""

from __future__ import annotations

import contextlib
import importlib.metadata
import logging
import time
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from fedcloud.core.errors import OrchestratorError
from fedcloud.core.participants import Participant, VmSpec
from fedcloud.core.stack import OrchestratorSettings
from fl.orchestrator.eligibility import ineligible_reason, needs_probe
from fl.orchestrator.nodes import (
    ACTIVATION_HOLD_S,
    ONLINE,
    STALE,
    SUPERVISED_REJOIN_S,
    NodeDirectory,
    NodeLaunch,
)
from fl.orchestrator.probe import ProbeResult, probe_all
from fl.orchestrator.results import (
    DispatchResult,
    NodePlacement,
    ParticipantResult,
    StartFailed,
    VmAttempt,
    WatchEvent,
)
from fl.orchestrator.rotation import QueueStore, rotation
from fl.orchestrator.scripts import (
    CA_FILE,
    KEY_FILE,
    LAUNCH_FILE,
    STOP_WAIT_S,
    SUPERVISOR_FILE,
    SUPERVISOR_SCRIPT,
    NodeStatus,
    launch_script,
    log_tail_command,
    parse_fields,
    prepare_command,
    read_status,
    remote_dir,
    start_command,
    stop_command,
    wait_status,
)
from fl.orchestrator.ssh import Session, SshError, Transport
from fl.orchestrator.warmstart import SHIM_FILE, STARTER_FILE, shim_text, starter_text
from fl.orchestrator.watcher import OFFLINE_GRACE_S, WATCH_INTERVAL_S, Watcher

log = logging.getLogger(__name__)

RESTART_DELAY_S = 5.0
"""The supervisor waits this long before restarting a dead SuperNode."""

ONLINE_POLL_S = 0.05
"""First pause between checks of the node list while waiting online (doubling up to the cap)."""
ONLINE_POLL_CAP_S = 0.5
"""Longest pause between two checks of the node list while waiting online."""
WAIT_WINDOW_S = 2.0
"""Longest wait on the VM (:func:`fl.orchestrator.scripts.wait_command`) between two checks."""
BACKOFF_CAP_S = 30.0
"""Upper bound on one back-off pause between attempts."""
REJOIN_TIMEOUT_S = SUPERVISED_REJOIN_S + 15.0
"""Online timeout for a re-dispatch (108 s): the SuperLink may refuse the moved key for up to
ACTIVATION_HOLD_S, which the new supervisor waits out (``held``)."""
LOST_NODE_BOUND_S = SUPERVISED_REJOIN_S + WATCH_INTERVAL_S + REJOIN_TIMEOUT_S
"""The stated bound (211 s): a participant whose SuperNode died is online again within this
many seconds of the death, by its supervisor's restart (within SUPERVISED_REJOIN_S, 93 s) or
else by the watcher's re-dispatch to its next eligible VM (decided at the first check after
SUPERVISED_REJOIN_S, online within REJOIN_TIMEOUT_S when that VM's first attempt succeeds; SSH
timeouts of a hung lost VM come on top)."""
REJOIN_TOLERATED_EXITS = 8
"""Exits of the SuperNode tolerated during a re-dispatch (rejected while the old session ages)."""
STALE_SESSION_WAIT_S = 90.0
"""Extra wait when an older session still holds the node id (heartbeat 30 s x 2 + a restart)."""
STOP_COMMAND_TIMEOUT_S = STOP_WAIT_S + 10
"""Bound on a whole stop command (its own SIGTERM wait plus the shell's)."""
MAX_DISPATCH_WORKERS = 64
"""Participants dispatched at once (threads, mostly waiting on SSH and the SuperLink)."""
PERMANENT_KINDS = frozenset({"hostkey", "auth", "config"})
"""SSH failure kinds that retrying the same VM cannot fix."""


def backoff_delay(attempt: int, base_s: float) -> float:
    """Return the pause before attempt number ``attempt`` (1-based; none before the first)."""
    if attempt <= 1:
        return 0.0
    return float(min(BACKOFF_CAP_S, base_s * 2 ** (attempt - 2)))


class Orchestrator:
    """Dispatches the participants' SuperNodes to their VMs, and moves them when they die.

    Args:
        participants: The federation (with their VM inventories).
        launches: Participant name to what its SuperNode needs.
        transport: SSH transport (:class:`fl.orchestrator.ssh.ParamikoTransport`, or a double).
        nodes: The SuperLink's node list.
        settings: ``fedcloud:orchestrator``.
        state_dir: The stack's state directory (the round-robin queues live there).
        superlink_flwr: The SuperLink's flwr version (default: the one installed here, which is
            what the local and the bootstrapped SuperLink run).
        sleep: Pause function (tests pass a recorder).
        restart_delay_s: The supervisor's restart delay.
    """

    def __init__(self, participants: Sequence[Participant], launches: Mapping[str, NodeLaunch],
                 *, transport: Transport, nodes: NodeDirectory, settings: OrchestratorSettings,
                 state_dir: Path, superlink_flwr: str | None = None,
                 sleep: Callable[[float], None] = time.sleep,
                 restart_delay_s: float = RESTART_DELAY_S) -> None:
        self.participants = {p.name: p for p in participants}
        missing = [p for p in self.participants if p not in launches]
        if missing:
            raise OrchestratorError(f"no SuperNode launch settings for {', '.join(missing)}.",
                                    "pass a NodeLaunch (CA, node key, data dir) per participant.")
        self.launches = dict(launches)
        self.transport = transport
        self.nodes = nodes
        self.settings = settings
        self.queue = QueueStore(state_dir)
        self.superlink_flwr = superlink_flwr or importlib.metadata.version("flwr")
        self.sleep = sleep
        self.restart_delay_s = restart_delay_s
        self.last_dispatch: DispatchResult | None = None

    # -- probing and filtering --

    def probe(self, names: Sequence[str] | None = None) -> dict[str, ProbeResult]:
        """Probe, in parallel, every VM of ``names`` that its declaration leaves a candidate.

        Returns:
            ``"<participant>/<vm id>"`` to probe result.
        """
        keyed: dict[str, VmSpec] = {}
        for name in names or list(self.participants):
            for vm in self.participants[name].vms:
                if needs_probe(vm, self.settings):
                    keyed[f"{name}/{vm.id}"] = vm
        return probe_all(self.transport, keyed)

    def eligible(self, name: str, probes: Mapping[str, ProbeResult],
                 ) -> tuple[list[VmSpec], dict[str, str]]:
        """Split a participant's VMs into eligible ones and the reasons for the others."""
        ok: list[VmSpec] = []
        reasons: dict[str, str] = {}
        for vm in self.participants[name].vms:
            why = ineligible_reason(vm, probes.get(f"{name}/{vm.id}"), self.settings,
                                    self.superlink_flwr)
            if why is None:
                ok.append(vm)
            else:
                reasons[vm.id] = why
        return ok, reasons

    # -- dispatch --

    def dispatch(self, names: Sequence[str] | None = None,
                 probes: Mapping[str, ProbeResult] | None = None) -> DispatchResult:
        """Probe, filter and start every participant's SuperNode, all in parallel.

        Each participant goes through probe, filter, start and online confirmation in its own
        thread (at most :data:`MAX_DISPATCH_WORKERS` at a time), independently of the others.

        Args:
            names: Participants to dispatch (default: all).
            probes: Reuse these probe results (default: probe now).

        Returns:
            The per-participant result map; it never raises for one participant's failure.
        """
        chosen = list(names or self.participants)
        result = DispatchResult()
        with ThreadPoolExecutor(max_workers=max(1, min(MAX_DISPATCH_WORKERS, len(chosen))),
                                thread_name_prefix="dispatch") as pool:
            futures = {name: pool.submit(self._probe_and_dispatch, name, probes)
                       for name in chosen}
            for name, future in futures.items():
                try:
                    result[name] = future.result()
                except Exception as exc:  # one participant's bug must not sink the others
                    log.exception("dispatch of %s failed unexpectedly", name)
                    result[name] = ParticipantResult(name, None, error=f"internal error: {exc}")
        if names is None:
            self.last_dispatch = result
        return result

    def _probe_and_dispatch(self, name: str,
                            probes: Mapping[str, ProbeResult] | None) -> ParticipantResult:
        # Each participant probes its own VMs and starts at once: no wait for the slowest
        # participant's probes.
        return self.dispatch_one(name, self.probe([name]) if probes is None else probes)

    def dispatch_one(self, name: str, probes: Mapping[str, ProbeResult],
                     exclude: Sequence[str] = (), rejoin: bool = False) -> ParticipantResult:
        """Dispatch one participant: the circle from the VM after the last one, with retries.

        Args:
            name: The participant.
            probes: Probe results keyed ``"<participant>/<vm id>"``.
            exclude: VM ids not to use this time (the one a node was just lost on).
            rejoin: A re-dispatch of a lost node: tolerate the SuperLink rejecting the moved key
                for a while (:data:`REJOIN_TIMEOUT_S`, :data:`REJOIN_TOLERATED_EXITS`).
        """
        eligible, ineligible = self.eligible(name, probes)
        for vm_id in exclude:
            ineligible.setdefault(vm_id, "excluded: its SuperNode was just lost there")
        eligible = [vm for vm in eligible if vm.id not in exclude]
        inventory = [vm.id for vm in self.participants[name].vms]
        circle = rotation(inventory, [vm.id for vm in eligible], self.queue.last(name))
        if not circle:
            return ParticipantResult(name, None, ineligible=ineligible,
                                     error="no eligible VM")
        by_id = {vm.id: vm for vm in eligible}
        placement, attempts = self._try_circle(name, circle, by_id, rejoin)
        if attempts:
            self.queue.record(name, circle, attempts[-1].vm_id)
        if placement is None:
            return ParticipantResult(name, None, tuple(attempts), ineligible,
                                     error=f"no VM started it in {len(attempts)} attempts")
        return ParticipantResult(name, placement, tuple(attempts), ineligible)

    def _try_circle(self, name: str, circle: Sequence[str], by_id: Mapping[str, VmSpec],
                    rejoin: bool) -> tuple[NodePlacement | None, list[VmAttempt]]:
        attempts: list[VmAttempt] = []
        dead: set[str] = set()
        position = 0
        for attempt in range(1, self.settings.max_attempts + 1):
            if all(vm in dead for vm in circle):
                break
            vm_id = circle[position % len(circle)]
            while vm_id in dead:
                position += 1
                vm_id = circle[position % len(circle)]
            position += 1
            pause = backoff_delay(attempt, self.settings.backoff_s)
            if pause:
                self.sleep(pause)
            start = time.monotonic()
            try:
                placement = self.start_on(by_id[vm_id], name, rejoin=rejoin)
            except StartFailed as exc:
                attempts.append(VmAttempt(vm_id, False, exc.stage, exc.reason,
                                          time.monotonic() - start))
                log.info("%s: start on %s failed at %s: %s", name, vm_id, exc.stage, exc.reason)
                if exc.permanent:
                    dead.add(vm_id)
                continue
            attempts.append(VmAttempt(vm_id, True, "online", "online",
                                      time.monotonic() - start))
            return placement, attempts
        return None, attempts

    def start_on(self, vm: VmSpec, name: str, rejoin: bool = False) -> NodePlacement:
        """Start the participant's SuperNode on one VM and wait until it is online.

        Raises:
            StartFailed: With the stage (``connect``, ``hostkey``, ``auth``, ``prepare``,
                ``upload``, ``start``, ``online``) and the reason; the VM is left clean.
        """
        declared = remote_dir(vm, name)
        try:
            session = self.transport.connect(vm)
        except SshError as exc:
            raise StartFailed(exc.kind, exc.message, exc.kind in PERMANENT_KINDS) from None
        with session:
            try:
                return self._start_in(session, vm, name, declared, rejoin)
            except SshError as exc:
                self._cleanup(session, declared)
                raise StartFailed(exc.kind, exc.message) from None
            except StartFailed:
                self._cleanup(session, declared)
                raise

    def _start_in(self, session: Session, vm: VmSpec, name: str, declared: str,
                  rejoin: bool) -> NodePlacement:
        python = f"{vm.venv}/bin/python" if vm.venv else "python3"
        prep = session.run(prepare_command(declared, python))
        fields = parse_fields(prep.stdout)
        port, directory = fields.get("port", ""), fields.get("dir", "")
        if not prep.ok or not port.isdigit() or not directory.startswith("/"):
            raise StartFailed("prepare", f"cannot prepare {declared}: {prep.tail()}")
        self._upload(session, directory, name, launch_script(
            directory, self.launches[name], name, int(port), vm.venv), python)
        started_at = time.time()
        res = session.run(start_command(directory, self.restart_delay_s, ACTIVATION_HOLD_S,
                                        held=rejoin))
        pid = parse_fields(res.stdout).get("pid", "")
        if not res.ok or not pid.isdigit():
            raise StartFailed("start", f"cannot start the supervisor: {res.tail()}")
        self._wait_online(session, name, directory, started_at, rejoin)
        return NodePlacement(name, vm, directory, int(pid), int(port), started_at)

    def _upload(self, session: Session, directory: str, name: str, launch: str,
                python: str) -> None:
        node = self.launches[name]
        try:
            ca = node.ca_cert.read_bytes()
            key = node.node_key.read_bytes()
        except OSError as exc:
            raise OrchestratorError(f"cannot read the node's TLS material ({exc}).",
                                    "create it with fl.initializer.certs.ensure_deployment_certs."
                                    ) from None
        session.put(ca, f"{directory}/{CA_FILE}", 0o644)
        session.put(key, f"{directory}/{KEY_FILE}", 0o600)
        session.put(launch.encode(), f"{directory}/{LAUNCH_FILE}", 0o700)
        session.put(SUPERVISOR_SCRIPT.encode(), f"{directory}/{SUPERVISOR_FILE}", 0o700)
        session.put(starter_text().encode(), f"{directory}/{STARTER_FILE}", 0o600)
        session.put(shim_text(python).encode(), f"{directory}/{SHIM_FILE}", 0o700)

    def _wait_online(self, session: Session, name: str, directory: str, started_at: float,
                     rejoin: bool) -> None:
        timeout = max(self.settings.online_timeout_s, REJOIN_TIMEOUT_S if rejoin else 0.0)
        tolerated = REJOIN_TOLERATED_EXITS if rejoin else 0
        deadline = time.monotonic() + timeout
        stale_seen = joined = False
        pause = ONLINE_POLL_S
        while True:
            state = self.nodes.node_state(name, since=started_at)
            if state == ONLINE:
                return
            if state == STALE and not stale_seen:
                # An older session (a crashed node) still holds the id: the SuperLink refuses
                # the key until that session's heartbeat expires; the supervisor retries.
                stale_seen = True
                deadline = max(deadline, time.monotonic() + STALE_SESSION_WAIT_S)
            # The VM waits (bounded) for the node's log to say the SuperLink activated it, for
            # an exit or for the supervisor's death: no SSH round trip per poll.
            window = min(WAIT_WINDOW_S, max(0.0, deadline - time.monotonic()))
            began = time.monotonic()
            status = wait_status(session, directory, window, exits_seen=tolerated)
            if status.exits > tolerated and state != STALE:
                tail = session.run(log_tail_command(directory)).stdout
                tail = " | ".join(line.strip() for line in tail.splitlines() if line.strip())
                raise StartFailed("start", f"flower-supernode exited with code "
                                  f"{status.last_exit}: {tail[-300:]}")
            if not status.supervisor_alive:
                raise StartFailed("start", "the supervisor died")
            if time.monotonic() >= deadline:
                raise StartFailed("online", f"SuperNode of {name} not online at the SuperLink "
                                  f"within {timeout:g} s")
            first_join = status.joined and not joined
            joined = joined or status.joined
            if not first_join and time.monotonic() - began < window / 2:
                # Back from the VM early with nothing new (or the SuperLink's list lags the
                # node's own log): a short, growing pause before asking again.
                self.sleep(min(pause, max(0.0, deadline - time.monotonic())))
                pause = min(pause * 2, ONLINE_POLL_CAP_S)

    def _cleanup(self, session: Session, directory: str) -> None:
        with contextlib.suppress(SshError):
            session.run(stop_command(directory), timeout_s=STOP_COMMAND_TIMEOUT_S)

    # -- stop and status --

    def stop_placement(self, placement: NodePlacement) -> str | None:
        """Stop one SuperNode and remove its key from the VM; return an error, or ``None``."""
        try:
            with self.transport.connect(placement.vm) as session:
                res = session.run(stop_command(placement.remote_dir),
                                  timeout_s=STOP_COMMAND_TIMEOUT_S)
        except SshError as exc:
            return exc.message
        return None if res.ok else f"stop failed on {placement.vm.id}: {res.tail()}"

    def stop(self, placements: Mapping[str, NodePlacement]) -> dict[str, str | None]:
        """Stop every placement in parallel; participant to error (``None`` when stopped)."""
        if not placements:
            return {}
        with ThreadPoolExecutor(max_workers=len(placements), thread_name_prefix="stop") as pool:
            futures = {name: pool.submit(self.stop_placement, p)
                       for name, p in placements.items()}
            return {name: f.result() for name, f in futures.items()}

    def status(self, placement: NodePlacement) -> NodeStatus:
        """Read a placement's supervisor state over SSH (raises :class:`SshError`)."""
        with self.transport.connect(placement.vm) as session:
            return read_status(session, placement.remote_dir)

    def redispatch(self, placement: NodePlacement, reason: str) -> ParticipantResult:
        """Move a lost participant to the next eligible VM (the same node key goes along).

        The lost placement is stopped first when its VM still answers, so two SuperNodes never
        share a key.
        """
        log.warning("%s: SuperNode on %s is gone (%s); re-dispatching", placement.participant,
                    placement.vm.id, reason)
        self.stop_placement(placement)
        probes = self.probe([placement.participant])
        return self.dispatch_one(placement.participant, probes, exclude=[placement.vm.id],
                                 rejoin=True)

    def record_event(self, event: WatchEvent) -> None:
        """Keep a watcher event in the result of the dispatch that placed that participant."""
        if self.last_dispatch is not None and event.participant in self.last_dispatch:
            self.last_dispatch.events.append(event)

    def watcher(self, placements: Mapping[str, NodePlacement], interval_s: float = WATCH_INTERVAL_S,
                offline_grace_s: float = OFFLINE_GRACE_S,
                on_event: Callable[[WatchEvent], None] | None = None,
                rejoin_grace_s: float = SUPERVISED_REJOIN_S) -> Watcher:
        """Return a :class:`Watcher` over ``placements`` (start it with ``with`` or ``start``).

        Its events go to ``on_event`` and to the ``events`` of the last full dispatch's result.
        A dict of placements is updated in place as nodes move.
        """
        return Watcher(self, placements, interval_s, offline_grace_s, on_event, rejoin_grace_s)
