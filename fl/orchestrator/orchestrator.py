"""Dynamic Task Orchestrator: a healthy VM for every participant, round-robin, with retries.

For each FL task and each participant (all participants in parallel; one's failure never stops
the others):

1. **Filter**: a VM is eligible when the private cloud reports it Active, its declared spec and
   its live probe (:mod:`fl.orchestrator.probe`) meet ``fedcloud:orchestrator``'s minimum, and its ``flwr``
   shares major.minor with the SuperLink. An unreachable VM is not eligible.
2. **Queue**: the eligible VMs form a circle in inventory order; the task goes to the VM after the
   one used last. The position is persisted per participant under the stack's state directory
   (``<state>/orchestrator/queue-<participant>.json``, written atomically).
3. **Start**: over SSH (:mod:`fl.orchestrator.ssh`) the CA certificate (0644), the participant's node key
   (0600) and the launch script (the exact :func:`fl.orchestrator.supernode.supernode_argv` line, which carries
   the node config with the data path) are uploaded by SFTP to
   ``<workDir>/fedcloud-<participant>/``; a supervisor shell loop is started with ``setsid`` so it
   survives the SSH session, writes its PID file and restarts ``flower-supernode``
   :data:`RESTART_DELAY_S` after it dies. The start is confirmed when the SuperLink's node list
   shows the participant's node online (:class:`SuperLinkNodes`) within ``onlineTimeoutS``.
4. **Retry**: any failure (connect, host key, auth, upload, start, not online in time) is recorded
   and the next eligible VM in the circle is tried, at most ``maxAttempts`` times with exponential
   back-off from ``backoffS``. A VM that failed for a permanent reason (host key, auth, key file)
   is not tried twice in one dispatch.
5. **Watch**: :class:`Watcher` checks every placement (supervisor alive over SSH, node online) and
   re-dispatches a participant whose SuperNode is gone to the next VM; the same node key is
   uploaded there, so the node keeps its identity (node id) on the SuperLink.

The result of a dispatch is a :class:`DispatchResult`, a per-participant map (Fabric's
``GroupResult`` model) of :class:`ParticipantResult`: the placement when it succeeded, every VM
tried and why each failed, and why the other VMs were filtered out.

Typical wiring (the lead's local stack / Pulumi program)::

    settings = load_settings(raw)
    nodes = SuperLinkNodes(cli, connection, node_ids)          # node ids from registration
    launches = {p.name: NodeLaunch(superlink=addr, ca_cert=certs.ca.cert,
                                   node_key=certs.nodes[p.name].private_key,
                                   data_dir=p.data_dir or "data") for p in participants}
    orch = Orchestrator(participants, launches, transport=ParamikoTransport(
        settings.host_key_policy), nodes=nodes, settings=settings, state_dir=raw.state_dir)
    result = orch.dispatch()
    with orch.watcher(result.placements()):
        ...  # training
    orch.stop(result.placements())
"""

from __future__ import annotations

import contextlib
import datetime as dt
import importlib.metadata
import json
import logging
import os
import shlex
import tempfile
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Protocol

from fedcloud.core.config import RawConfig
from fedcloud.core.errors import OrchestratorError
from fedcloud.core.flower import FLOWER_QUIET_ENV
from fedcloud.core.participants import Participant, VmSpec
from fl.orchestrator.probe import ProbeResult, flwr_compatible, probe_all
from fl.orchestrator.ssh import HOST_KEY_POLICIES, HostKeyPolicy, Session, SshError, Transport
from fl.orchestrator.supernode import (
    MAX_WAIT_TIME_S,
    supernode_argv,
    supernode_env,
    supernode_shell_command,
)

log = logging.getLogger(__name__)

RESTART_DELAY_S = 15.0
"""The supervisor waits this long before restarting a dead SuperNode (a node restarted right
after a crash is rejected by the SuperLink for about 50 s, so it must retry with a delay)."""
ONLINE_POLL_S = 1.0
"""Interval between checks of the node list (and of the supervisor) while waiting online."""
BACKOFF_CAP_S = 30.0
"""Upper bound on one back-off pause between attempts."""
STOP_WAIT_S = 10.0
"""How long a stop waits for the SuperNode to exit after SIGTERM before SIGKILL."""
WATCH_INTERVAL_S = 10.0
"""Interval between two watcher checks of every placement."""
OFFLINE_GRACE_S = 90.0
"""A running node may be offline this long (SuperLink heartbeat is 30 s x 2) before the watcher
re-dispatches it."""
REJOIN_TIMEOUT_S = 150.0
"""Online timeout for a re-dispatch: the SuperLink may reject the moved key for about 50 s."""
REJOIN_TOLERATED_EXITS = 8
"""Exits of the SuperNode tolerated during a re-dispatch (rejected while the old session ages)."""
STALE_SESSION_WAIT_S = 90.0
"""Extra wait when an older session still holds the node id (heartbeat 30 s x 2 + a restart)."""
NODE_LIST_MAX_AGE_S = 1.0
"""The SuperLink's node list is fetched at most once per this interval for all participants."""
CLOCK_SKEW_S = 5.0
"""Tolerance between this machine's and the SuperLink's clocks when reading ``online-at``."""
LIVE_MEMORY_TOLERANCE = 0.9
"""Live memory may read this fraction of the minimum (the kernel reserves part of the RAM: a
4 GiB VM reports about 3.8 GiB MemTotal)."""
QUEUE_DIR = "orchestrator"
DEFAULT_WORK_DIR = "fedcloud"

# Remote file names in <workDir>/fedcloud-<participant>/.
CA_FILE = "ca.pem"
KEY_FILE = "node.key"
LAUNCH_FILE = "launch.sh"
SUPERVISOR_FILE = "supervise.sh"
SUPERVISOR_PID = "supervisor.pid"
NODE_PID = "supernode.pid"
EXITS_FILE = "exits"
STOP_FILE = "stop"
LOG_FILE = "supernode.log"

PERMANENT_KINDS = frozenset({"hostkey", "auth", "config"})

# The supervisor: restarts the SuperNode after a delay until the stop file exists. It runs in
# its own session (setsid), so it survives the SSH connection; its PID is the process group id.
SUPERVISOR_SCRIPT = """#!/bin/sh
# fedcloud SuperNode supervisor (fl/orchestrator.py). Usage: supervise.sh RESTART_DELAY_S
cd "$(dirname "$0")" || exit 1
delay="$1"
echo $$ > supervisor.pid
n=0
while [ ! -e stop ]; do
  n=$((n + 1))
  sh ./launch.sh >> supernode.log 2>&1 &
  echo $! > supernode.pid
  wait $!
  code=$?
  echo "$n $code $(date +%s)" >> exits
  [ -e stop ] && break
  sleep "$delay"
done
"""

# Stop whatever supervisor runs in the current directory; leaves no node key behind. ONE SIGTERM
# only: Flower's handler restores the default action after the first, so a second signal kills
# the SuperNode before it deactivates itself at the SuperLink (which then refuses the same key
# elsewhere until the old session's heartbeat expires, about 60 s).
_ALIVE_FN = ("alive() { [ -n \"$1\" ] && [ -e /proc/$1 ] && "
             "! grep -q '^State:.Z' /proc/$1/status; }\n")
_STOP_SNIPPET = _ALIVE_FN.replace("{", "{{").replace("}", "}}") + """touch stop
pg=$(cat supervisor.pid 2>/dev/null); node=$(cat supernode.pid 2>/dev/null)
if alive "$pg"; then kill -TERM -"$pg" 2>/dev/null; elif alive "$node"; then kill -TERM "$node"; fi
i=0
while {{ alive "$pg" || alive "$node"; }} && [ $i -lt {ticks} ]; do sleep 0.1; i=$((i + 1)); done
if [ -n "$pg" ]; then kill -KILL -"$pg" 2>/dev/null; fi
if alive "$node"; then kill -KILL "$node" 2>/dev/null; fi
rm -f {key} supervisor.pid supernode.pid
"""


# -- settings --------------------------------------------------------------------------------


@dataclass(frozen=True)
class OrchestratorSettings:
    """``fedcloud:orchestrator`` (defaults live in ``Pulumi.yaml`` only)."""

    min_vcpus: float
    min_memory_gb: float
    min_disk_gb: float
    min_free_disk_gb: float
    max_attempts: int
    backoff_s: float
    online_timeout_s: float
    host_key_policy: HostKeyPolicy


def load_settings(raw: RawConfig) -> OrchestratorSettings:
    """Read and validate ``fedcloud:orchestrator``.

    Raises:
        ConfigError: A key is unknown, missing or out of range (names the key and the fix).
    """
    view = raw.view().sub("orchestrator")
    view.check_keys(["minVcpus", "minMemoryGb", "minDiskGb", "minFreeDiskGb", "maxAttempts",
                     "backoffS", "onlineTimeoutS", "hostKeyPolicy"])
    policy = view.get_str("hostKeyPolicy", choices=HOST_KEY_POLICIES)
    return OrchestratorSettings(
        min_vcpus=view.get_float("minVcpus", minimum=0),
        min_memory_gb=view.get_float("minMemoryGb", minimum=0),
        min_disk_gb=view.get_float("minDiskGb", minimum=0),
        min_free_disk_gb=view.get_float("minFreeDiskGb", minimum=0),
        max_attempts=view.get_int("maxAttempts", minimum=1, maximum=100),
        backoff_s=view.get_float("backoffS", minimum=0, maximum=600),
        online_timeout_s=view.get_float("onlineTimeoutS", minimum=1, maximum=3600),
        host_key_policy="tofu" if policy == "tofu" else "reject",
    )


# -- filter ----------------------------------------------------------------------------------


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


# -- queue -----------------------------------------------------------------------------------


def rotation(inventory: Sequence[str], eligible: Sequence[str], last: str | None) -> list[str]:
    """Return the eligible VMs in circle order, starting after ``last`` (a pure function).

    The circle follows the inventory order; a ``last`` that is no longer eligible still marks
    the position, so the circle moves on from where it stood.
    """
    wanted = set(eligible)
    members = [vm for vm in inventory if vm in wanted]
    if last is None or last not in inventory:
        return members
    pos = inventory.index(last)
    after = [vm for vm in members if inventory.index(vm) > pos]
    return after + [vm for vm in members if inventory.index(vm) <= pos]


def backoff_delay(attempt: int, base_s: float) -> float:
    """Return the pause before attempt number ``attempt`` (1-based; none before the first)."""
    if attempt <= 1:
        return 0.0
    return float(min(BACKOFF_CAP_S, base_s * 2 ** (attempt - 2)))


class QueueStore:
    """The per-participant circle positions under ``<state>/orchestrator/``.

    Args:
        state_dir: The stack's state directory (``RawConfig.state_dir``).
    """

    def __init__(self, state_dir: Path) -> None:
        self.dir = Path(state_dir) / QUEUE_DIR

    def path(self, participant: str) -> Path:
        """The participant's queue file."""
        return self.dir / f"queue-{participant}.json"

    def last(self, participant: str) -> str | None:
        """Return the VM the participant's last task went to (``None`` before the first).

        Raises:
            OrchestratorError: The file exists but is not a queue file.
        """
        path = self.path(participant)
        try:
            doc = json.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            return None
        except (OSError, json.JSONDecodeError) as exc:
            raise OrchestratorError(f"{path}: unreadable round-robin queue ({exc}).",
                                    f"delete {path}; the circle restarts at the first eligible "
                                    "VM.") from None
        if not isinstance(doc, dict) or not isinstance(doc.get("last"), str | None):
            raise OrchestratorError(f"{path}: not a round-robin queue file.",
                                    f"delete {path}; the circle restarts at the first eligible "
                                    "VM.")
        last = doc.get("last")
        return last if isinstance(last, str) else None

    def record(self, participant: str, circle: Sequence[str], last: str) -> None:
        """Persist the circle and the VM used last (temp file + ``os.replace``)."""
        self.dir.mkdir(parents=True, exist_ok=True)
        doc = {"participant": participant, "circle": list(circle), "last": last,
               "updated": dt.datetime.now(dt.UTC).isoformat(timespec="seconds")}
        fd, tmp = tempfile.mkstemp(prefix=f".queue-{participant}.", dir=self.dir)
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as handle:
                json.dump(doc, handle, indent=1)
                handle.flush()
                os.fsync(handle.fileno())
            os.replace(tmp, self.path(participant))
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise


# -- results ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Placement:
    """A participant's SuperNode running under its supervisor on one VM."""

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
    placement: Placement | None
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


class DispatchResult(dict[str, ParticipantResult]):
    """Per-participant results of one dispatch (Fabric's ``GroupResult`` model)."""

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

    def placements(self) -> dict[str, Placement]:
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


# -- SuperLink node list -----------------------------------------------------------------------


ONLINE, STALE, OFFLINE = "online", "stale", "offline"


class NodeDirectory(Protocol):
    """Whether a participant's SuperNode is online at the SuperLink."""

    def node_state(self, participant: str, since: float | None = None) -> str:
        """Return the node's state at the SuperLink.

        :data:`ONLINE`: online, and came online at or after epoch ``since``; :data:`STALE`:
        online since before ``since`` (an older session still holds the node id until its
        heartbeat expires); :data:`OFFLINE`: not online.
        """
        ...


class NodeEntry(Protocol):
    """One entry of the SuperLink's node list (``fl.initializer.flwr_cli.NodeInfo``)."""

    @property
    def node_id(self) -> int:
        """Flower's node id."""
        ...

    @property
    def online(self) -> bool:
        """Whether the SuperLink sees it now."""
        ...

    @property
    def online_at(self) -> str:
        """When it came online (ISO 8601)."""
        ...


class NodeLister(Protocol):
    """What :class:`SuperLinkNodes` needs of ``fl.initializer.flwr_cli.FlwrCli``."""

    def list_nodes(self, connection: str) -> Sequence[NodeEntry]:
        """Return the SuperLink's node list."""
        ...


def _epoch(text: str) -> float | None:
    if not text or text == "N/A":
        return None
    try:
        stamp = dt.datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        return None
    if stamp.tzinfo is None:
        stamp = stamp.replace(tzinfo=dt.UTC)
    return stamp.timestamp()


class SuperLinkNodes:
    """:class:`NodeDirectory` over the SuperLink's node list (``flwr supernode list``).

    One list call (about 1.7 s) serves every participant's thread for
    :data:`NODE_LIST_MAX_AGE_S`.

    Args:
        cli: ``fl.initializer.flwr_cli.FlwrCli`` (or anything with ``list_nodes(connection)``).
        connection: The CLI's connection name for the SuperLink.
        node_ids: Participant to node id (from ``FlwrCli.register_node``).
    """

    def __init__(self, cli: NodeLister, connection: str, node_ids: Mapping[str, int]) -> None:
        self.cli = cli
        self.connection = connection
        self.node_ids = dict(node_ids)
        self._lock = threading.Lock()
        self._fetched = float("-inf")
        self._online: dict[int, float | None] = {}

    def node_state(self, participant: str, since: float | None = None) -> str:
        """Return the participant's node state (see :meth:`NodeDirectory.node_state`)."""
        node_id = self.node_ids.get(participant)
        if node_id is None:
            raise OrchestratorError(f"participant '{participant}' has no registered node id.",
                                    "register its node key (flwr supernode register) first.")
        with self._lock:
            if time.monotonic() - self._fetched >= NODE_LIST_MAX_AGE_S:
                nodes = self.cli.list_nodes(self.connection)
                self._online = {int(n.node_id): _epoch(n.online_at) for n in nodes if n.online}
                self._fetched = time.monotonic()
            if node_id not in self._online:
                return OFFLINE
            came = self._online[node_id]
        fresh = since is None or came is None or came >= since - CLOCK_SKEW_S
        return ONLINE if fresh else STALE


# -- start / stop on one VM ----------------------------------------------------------------------


@dataclass(frozen=True)
class NodeLaunch:
    """What a participant's SuperNode needs, wherever it lands.

    Attributes:
        superlink: The SuperLink's ``host:port`` as seen from the VMs.
        ca_cert: Local path of the deployment CA certificate.
        node_key: Local path of the participant's node private key (OpenSSH, registered).
        data_dir: The participant's data directory on its VMs (node config ``data-dir``).
        max_wait_time_s: The SuperNode's ``--max-wait-time``.
    """

    superlink: str
    ca_cert: Path
    node_key: Path
    data_dir: str
    max_wait_time_s: float = MAX_WAIT_TIME_S


class StartFailed(Exception):
    """A start on one VM failed at ``stage`` (internal; becomes a :class:`VmAttempt`)."""

    def __init__(self, stage: str, reason: str, permanent: bool = False) -> None:
        super().__init__(reason)
        self.stage = stage
        self.reason = reason
        self.permanent = permanent


def remote_dir(vm: VmSpec, participant: str) -> str:
    """The participant's directory on ``vm``."""
    return f"{vm.work_dir or DEFAULT_WORK_DIR}/fedcloud-{participant}"


def _quiet(command: str) -> str:
    exports = " ".join(f"{k}={v}" for k, v in FLOWER_QUIET_ENV.items())
    return f"export {exports}; {command}"


def stop_command(directory: str) -> str:
    """Return the shell command that stops the supervisor in ``directory`` and removes the key."""
    body = _STOP_SNIPPET.format(ticks=int(STOP_WAIT_S * 10), key=KEY_FILE)
    return f"cd {shlex.quote(directory)} 2>/dev/null || exit 0\n{body}"


def _prepare_command(directory: str, python: str) -> str:
    q = shlex.quote(directory)
    port = ("import socket; s = socket.socket(); s.bind(('127.0.0.1', 0)); "
            "print('port=%d' % s.getsockname()[1])")
    return _quiet(f"mkdir -p {q} && chmod 700 {q} && cd {q} || exit 3\n"
                  + _STOP_SNIPPET.format(ticks=int(STOP_WAIT_S * 10), key=KEY_FILE)
                  + f"rm -f {STOP_FILE} {EXITS_FILE}\n"
                  + f"{shlex.quote(python)} -c {shlex.quote(port)}")


def _start_command(directory: str, delay_s: float) -> str:
    q = shlex.quote(directory)
    # A simple command in the background: $! is setsid's PID, which execs the supervisor.
    return _quiet(f"cd {q} || exit 3\nsetsid sh ./{SUPERVISOR_FILE} {delay_s:g} "
                  f"</dev/null >/dev/null 2>&1 &\necho pid=$!")


def _status_command(directory: str) -> str:
    q = shlex.quote(directory)
    return (f"cd {q} 2>/dev/null || {{ echo alive=0; exit 0; }}\n"
            + _ALIVE_FN
            + f"pg=$(cat {SUPERVISOR_PID} 2>/dev/null)\n"
            "if alive \"$pg\"; then echo alive=1; else echo alive=0; fi\n"
            f"echo exits=$(cat {EXITS_FILE} 2>/dev/null | wc -l)\n"
            f"echo last=$(tail -n 1 {EXITS_FILE} 2>/dev/null | cut -d' ' -f2)\n")


def _fields(text: str) -> dict[str, str]:
    out = {}
    for line in text.splitlines():
        key, sep, value = line.partition("=")
        if sep:
            out[key.strip()] = value.strip()
    return out


@dataclass(frozen=True)
class NodeStatus:
    """A placement's state as seen over SSH."""

    supervisor_alive: bool
    exits: int
    last_exit: int | None


def read_status(session: Session, directory: str) -> NodeStatus:
    """Read a placement's supervisor state over an open session."""
    fields = _fields(session.run(_status_command(directory)).stdout)
    last = fields.get("last", "")
    return NodeStatus(supervisor_alive=fields.get("alive") == "1",
                      exits=int(fields.get("exits") or 0),
                      last_exit=int(last) if last.lstrip("-").isdigit() else None)


# -- the orchestrator --------------------------------------------------------------------------


class Orchestrator:
    """Dispatches the participants' SuperNodes to their VMs, and moves them when they die.

    Args:
        participants: The federation (with their VM inventories).
        launches: Participant name to what its SuperNode needs.
        transport: SSH transport (:class:`fl.orchestrator.ssh.ParamikoTransport`, or a scripted double).
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

        Args:
            names: Participants to dispatch (default: all).
            probes: Reuse these probe results (default: probe now).

        Returns:
            The per-participant result map; it never raises for one participant's failure.
        """
        chosen = list(names or self.participants)
        if probes is None:
            probes = self.probe(chosen)
        result = DispatchResult()
        with ThreadPoolExecutor(max_workers=max(1, len(chosen)),
                                thread_name_prefix="dispatch") as pool:
            futures = {name: pool.submit(self.dispatch_one, name, probes) for name in chosen}
            for name, future in futures.items():
                try:
                    result[name] = future.result()
                except Exception as exc:  # one participant's bug must not sink the others
                    log.exception("dispatch of %s failed unexpectedly", name)
                    result[name] = ParticipantResult(name, None, error=f"internal error: {exc}")
        return result

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
        attempts: list[VmAttempt] = []
        dead: set[str] = set()
        last_tried: str | None = None
        placement: Placement | None = None
        position = 0
        for attempt in range(1, self.settings.max_attempts + 1):
            candidates = [vm for vm in circle if vm not in dead]
            if not candidates:
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
            last_tried = vm_id
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
            break
        if last_tried is not None:
            self.queue.record(name, circle, last_tried)
        if placement is None:
            return ParticipantResult(name, None, tuple(attempts), ineligible,
                                     error=f"no VM started it in {len(attempts)} attempts")
        return ParticipantResult(name, placement, tuple(attempts), ineligible)

    def start_on(self, vm: VmSpec, name: str, rejoin: bool = False) -> Placement:
        """Start the participant's SuperNode on one VM and wait until it is online.

        Raises:
            StartFailed: With the stage (``connect``, ``hostkey``, ``auth``, ``upload``,
                ``start``, ``online``) and the reason; the VM is left clean.
        """
        launch = self.launches[name]
        directory = remote_dir(vm, name)
        try:
            session = self.transport.connect(vm)
        except SshError as exc:
            raise StartFailed(exc.kind, exc.message, exc.kind in PERMANENT_KINDS) from None
        with session:
            try:
                return self._start_in(session, vm, name, launch, directory, rejoin)
            except SshError as exc:
                self._cleanup(session, directory)
                raise StartFailed(exc.kind, exc.message) from None
            except StartFailed:
                self._cleanup(session, directory)
                raise

    def _start_in(self, session: Session, vm: VmSpec, name: str, launch: NodeLaunch,
                  directory: str, rejoin: bool) -> Placement:
        python = f"{vm.venv}/bin/python" if vm.venv else "python3"
        prep = session.run(_prepare_command(directory, python))
        port = _fields(prep.stdout).get("port", "")
        if not prep.ok or not port.isdigit():
            raise StartFailed("prepare", f"cannot prepare {directory}: {prep.tail()}")
        try:
            ca = launch.ca_cert.read_bytes()
            key = launch.node_key.read_bytes()
        except OSError as exc:
            raise OrchestratorError(f"cannot read the node's TLS material ({exc}).",
                                    "create it with fl.initializer.certs.ensure_deployment_certs.") from None
        bin_dir = f"{vm.venv}/bin" if vm.venv else None
        argv = supernode_argv(
            superlink=launch.superlink, data_dir=launch.data_dir, participant=name,
            ca_cert=f"{directory}/{CA_FILE}", private_key=f"{directory}/{KEY_FILE}",
            max_wait_time_s=launch.max_wait_time_s, runtime_host="127.0.0.1",
            runtime_port=int(port),
            executable=f"{bin_dir}/flower-supernode" if bin_dir else "flower-supernode",
        )
        env = supernode_env(flwr_home=f"{directory}/flwr-home", venv_bin=bin_dir)
        script = "#!/bin/sh\n# Written by fedcloud (fl/orchestrator.py)\n"
        script += supernode_shell_command(argv, env) + "\n"
        session.put(ca, f"{directory}/{CA_FILE}", 0o644)
        session.put(key, f"{directory}/{KEY_FILE}", 0o600)
        session.put(script.encode(), f"{directory}/{LAUNCH_FILE}", 0o700)
        session.put(SUPERVISOR_SCRIPT.encode(), f"{directory}/{SUPERVISOR_FILE}", 0o700)
        started_at = time.time()
        res = session.run(_start_command(directory, self.restart_delay_s))
        pid = _fields(res.stdout).get("pid", "")
        if not res.ok or not pid.isdigit():
            raise StartFailed("start", f"cannot start the supervisor: {res.tail()}")
        timeout = max(self.settings.online_timeout_s, REJOIN_TIMEOUT_S if rejoin else 0.0)
        tolerated = REJOIN_TOLERATED_EXITS if rejoin else 0
        deadline = time.monotonic() + timeout
        stale_seen = False
        while True:
            state = self.nodes.node_state(name, since=started_at)
            if state == ONLINE:
                return Placement(name, vm, directory, int(pid), int(port), started_at)
            if state == STALE and not stale_seen:
                # An older session (a crashed node) still holds the id: the SuperLink refuses
                # the key until that session's heartbeat expires; the supervisor retries.
                stale_seen = True
                deadline = max(deadline, time.monotonic() + STALE_SESSION_WAIT_S)
            status = read_status(session, directory)
            if status.exits > tolerated and state != STALE:
                tail = session.run(f"tail -n 3 {shlex.quote(directory)}/{LOG_FILE}").stdout
                tail = " | ".join(line.strip() for line in tail.splitlines() if line.strip())
                raise StartFailed("start", f"flower-supernode exited with code "
                                  f"{status.last_exit}: {tail[-300:]}")
            if not status.supervisor_alive:
                raise StartFailed("start", "the supervisor died")
            if time.monotonic() >= deadline:
                raise StartFailed("online", f"not online at the SuperLink within {timeout:g} s")
            self.sleep(ONLINE_POLL_S)

    def _cleanup(self, session: Session, directory: str) -> None:
        with contextlib.suppress(SshError):
            session.run(_quiet(stop_command(directory)), timeout_s=STOP_WAIT_S + 10)

    # -- stop and status --

    def stop_placement(self, placement: Placement) -> str | None:
        """Stop one SuperNode and remove its key from the VM; return an error, or ``None``."""
        try:
            with self.transport.connect(placement.vm) as session:
                res = session.run(_quiet(stop_command(placement.remote_dir)),
                                  timeout_s=STOP_WAIT_S + 10)
        except SshError as exc:
            return exc.message
        return None if res.ok else f"stop failed on {placement.vm.id}: {res.tail()}"

    def stop(self, placements: Mapping[str, Placement]) -> dict[str, str | None]:
        """Stop every placement in parallel; participant to error (``None`` when stopped)."""
        if not placements:
            return {}
        with ThreadPoolExecutor(max_workers=len(placements), thread_name_prefix="stop") as pool:
            futures = {name: pool.submit(self.stop_placement, p)
                       for name, p in placements.items()}
            return {name: f.result() for name, f in futures.items()}

    def status(self, placement: Placement) -> NodeStatus:
        """Read a placement's supervisor state over SSH (raises :class:`SshError`)."""
        with self.transport.connect(placement.vm) as session:
            return read_status(session, placement.remote_dir)

    def redispatch(self, placement: Placement, reason: str) -> ParticipantResult:
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

    def watcher(self, placements: Mapping[str, Placement], interval_s: float = WATCH_INTERVAL_S,
                offline_grace_s: float = OFFLINE_GRACE_S,
                on_event: Callable[[WatchEvent], None] | None = None) -> Watcher:
        """Return a :class:`Watcher` over ``placements`` (start it with ``with`` or ``start``)."""
        return Watcher(self, placements, interval_s, offline_grace_s, on_event)


def dispatch(participants: Sequence[Participant], launches: Mapping[str, NodeLaunch], *,
             transport: Transport, nodes: NodeDirectory, settings: OrchestratorSettings,
             state_dir: Path, superlink_flwr: str | None = None) -> DispatchResult:
    """Dispatch every participant's SuperNode once (see :class:`Orchestrator`)."""
    return Orchestrator(participants, launches, transport=transport, nodes=nodes,
                        settings=settings, state_dir=state_dir,
                        superlink_flwr=superlink_flwr).dispatch()


# -- watcher ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class WatchEvent:
    """A participant's SuperNode was found gone and re-dispatched (``result`` says where)."""

    participant: str
    lost_vm: str
    reason: str
    result: ParticipantResult


class Watcher:
    """Checks the placements during training and re-dispatches a participant that is gone.

    Gone means: its VM does not answer over SSH, its supervisor is not running, or the SuperLink
    has not listed it online for ``offline_grace_s`` (a crashed SuperNode alone is restarted by
    the supervisor). A failed re-dispatch is retried at the next check.

    Args:
        orchestrator: The orchestrator that made the placements.
        placements: Participant to placement; updated in place as nodes move.
        interval_s: Seconds between checks (background thread).
        offline_grace_s: How long a running node may stay offline.
        on_event: Called with each :class:`WatchEvent`.
    """

    def __init__(self, orchestrator: Orchestrator, placements: Mapping[str, Placement],
                 interval_s: float = WATCH_INTERVAL_S, offline_grace_s: float = OFFLINE_GRACE_S,
                 on_event: Callable[[WatchEvent], None] | None = None) -> None:
        self.orchestrator = orchestrator
        self.placements: dict[str, Placement] = dict(placements)
        self.interval_s = interval_s
        self.offline_grace_s = offline_grace_s
        self.on_event = on_event
        self.events: list[WatchEvent] = []
        self._offline_since: dict[str, float] = {}
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def _gone(self, placement: Placement) -> str | None:
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
