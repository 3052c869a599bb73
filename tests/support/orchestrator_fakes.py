"""A scripted transport double for the orchestrator's fast tests.

Each fake VM follows a :class:`VmScript`: whether SSH connects (or fails with a given kind),
what the probe prints, and what happens to a SuperNode started there (comes online, exits, never
shows up). The double answers the orchestrator's commands by recognising them (probe, prepare,
start, status, stop), records every command and upload, and drives :class:`FakeNodes`, the
SuperLink node list, from the SuperNodes "running" on the fake VMs.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType

from fedcloud.core.participants import Location, Participant, VmSpec
from fedcloud.core.stack import OrchestratorSettings
from fl.orchestrator import NodeLaunch
from fl.orchestrator.nodes import OFFLINE, ONLINE, STALE
from fl.orchestrator.ssh import CommandResult, FailureKind, SshError

GOOD_PROBE = ("vcpus=4\nmem_kb=8000000\nas_bytes=unlimited\ndisk_kb=50000000\n"
              "python=3.11.2\nflwr=1.41.0\n")


@dataclass
class VmScript:
    """How one fake VM behaves."""

    connect_error: FailureKind | None = None
    error_from_connect: int = 1  # the connect error applies from this connection on (1 = all)
    connect_delay_s: float = 0.0
    probe: str = GOOD_PROBE
    start: str = "online"  # online | exit | silent (never online, keeps running) | stale
    exit_code: int = 70


@dataclass
class FakeVmState:
    script: VmScript
    running: dict[str, int] = field(default_factory=dict)  # participant -> exits so far
    commands: list[str] = field(default_factory=list)
    uploads: dict[str, tuple[bytes, int]] = field(default_factory=dict)
    connects: int = 0
    exit_at: dict[str, int] = field(default_factory=dict)  # participant -> last exit (epoch)


class FakeSession:
    def __init__(self, transport: ScriptedTransport, vm: VmSpec) -> None:
        self.transport = transport
        self.vm = vm
        self.state = transport.state(vm)
        self.closed = False

    def __enter__(self) -> FakeSession:
        return self

    def __exit__(self, et: type[BaseException] | None, ev: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()

    def close(self) -> None:
        self.closed = True
        with self.transport.lock:
            self.transport.open_sessions -= 1

    def _participant(self, command: str) -> str:
        marker = "fedcloud-"
        rest = command.split(marker, 1)[1]
        return rest.split("'", 1)[0].split(" ", 1)[0].split("\n", 1)[0].split("/", 1)[0]

    def _absolute(self, participant: str) -> str:
        """Where ``cd <work dir>/fedcloud-<participant> && pwd -P`` lands on this fake VM."""
        work = self.vm.work_dir or "fedcloud"
        if not work.startswith("/"):
            work = f"/home/{self.vm.user}/{work}"
        return f"{work}/fedcloud-{participant}"

    def run(self, command: str, timeout_s: float = 30.0) -> CommandResult:
        assert not self.closed, "command on a closed session"
        st = self.state
        st.commands.append(command)
        if 'echo "vcpus=' in command:
            return CommandResult(0, st.script.probe, "")
        name = self._participant(command) if "fedcloud-" in command else ""
        if "socket.socket()" in command:  # prepare (stops a stale supervisor first)
            st.running.pop(name, None)
            return CommandResult(0, f"dir={self._absolute(name)}\nport=40001\n", "")
        if "setsid" in command:
            st.running[name] = 0
            if st.script.start == "exit":
                st.running[name] = 1
            return CommandResult(0, "pid=4242\n", "")
        if "echo alive=" in command:
            if name not in st.running:
                return CommandResult(0, "alive=0\nexits=0\nlast=\n", "")
            exits = st.running[name]
            at = st.exit_at.get(name, "")
            return CommandResult(0, f"alive=1\nexits={exits}\nlast={st.script.exit_code}\n"
                                 f"last_at={at}\n", "")
        if "touch stop" in command:
            st.running.pop(name, None)
            return CommandResult(0, "", "")
        if command.startswith("tail"):
            return CommandResult(0, "emulated fault: flower-supernode failed to start\n", "")
        return CommandResult(127, "", f"unscripted command: {command[:60]}")

    def put(self, data: bytes, remote_path: str, mode: int) -> None:
        assert not self.closed
        self.state.uploads[remote_path] = (data, mode)


class ScriptedTransport:
    """Transport double: fake VMs keyed by ``host:port``."""

    def __init__(self, scripts: dict[str, VmScript]) -> None:
        self.vms = {key: FakeVmState(script) for key, script in scripts.items()}
        self.lock = threading.Lock()
        self.open_sessions = 0

    def state(self, vm: VmSpec) -> FakeVmState:
        return self.vms[f"{vm.host}:{vm.port}"]

    def connect(self, vm: VmSpec) -> FakeSession:
        st = self.state(vm)
        st.connects += 1
        if st.script.connect_delay_s:
            time.sleep(st.script.connect_delay_s)
        if st.script.connect_error is not None and st.connects >= st.script.error_from_connect:
            raise SshError(st.script.connect_error, f"VM {vm.id}: scripted "
                           f"{st.script.connect_error} failure", "none")
        with self.lock:
            self.open_sessions += 1
        return FakeSession(self, vm)

    def running_on(self, participant: str) -> list[str]:
        return [key for key, st in self.vms.items() if participant in st.running]

    def kill_supernode(self, participant: str) -> int:
        """``kill -9`` of the participant's SuperNode (its supervisor lives on); the exit time."""
        now = int(time.time())
        for st in self.vms.values():
            if participant in st.running:
                st.running[participant] += 1
                st.exit_at[participant] = now
        return now


class FakeNodes:
    """The SuperLink's node list, derived from where SuperNodes run in the double."""

    def __init__(self, transport: ScriptedTransport) -> None:
        self.transport = transport
        # (participant, "host:port") -> when its session there came online (absent: fresh).
        self.online_at: dict[tuple[str, str], float] = {}

    def node_state(self, participant: str, since: float | None = None) -> str:
        for key, st in self.transport.vms.items():
            if participant not in st.running:
                continue
            if st.script.start == "online":
                came = self.online_at.get((participant, key))
                if came is not None and since is not None and came < since - 5.0:
                    return STALE  # an old session (a killed node's) still holds the id
                return ONLINE
            if st.script.start == "stale":
                # An old session holds the id for one poll, then the restarted node gets it.
                if st.running[participant] == 0:
                    st.running[participant] = 1
                    return STALE
                return ONLINE
        return OFFLINE


def settings(**changes: object) -> OrchestratorSettings:
    base: dict[str, object] = dict(
        min_vcpus=2, min_memory_gb=4, min_disk_gb=20, min_free_disk_gb=2, max_attempts=5,
        backoff_s=1.0, online_timeout_s=0.2, host_key_policy="reject")
    base.update(changes)
    return OrchestratorSettings(**base)  # type: ignore[arg-type]


def fake_participant(name: str, octet: int, work_dir: str | None = "/srv/fed work",
                     ) -> Participant:
    """The reference five-VM inventory for one participant, on fake addresses 10.<octet>.0.x.

    ``work_dir`` is the inventory's ``workDir`` (``None``: the default, under the home).
    """
    table = [("vm-001", "Active", 4, 8, 40), ("vm-002", "Active", 2, 4, 20),
             ("vm-003", "Inactive", 8, 16, 80), ("vm-004", "Inactive", 2, 4, 20),
             ("vm-005", "Active", 1, 0.25, 8)]
    vms = tuple(
        VmSpec(id=vm_id, host=f"10.{octet}.0.{i}", port=22, user="fedcloud",
               key_path=Path("/nonexistent/key"), host_key_fingerprint="SHA256:" + "A" * 43,
               state=state, vcpus=cpu, memory_gb=mem, disk_gb=disk, venv="/opt/venv",
               work_dir=work_dir)
        for i, (vm_id, state, cpu, mem, disk) in enumerate(table, start=1))
    return Participant(name=name, location=Location(region="aws:us-east-1"), egress_cidr=None,
                       data_dir="/data", vms=vms)


def launch(tmp: Path, name: str) -> NodeLaunch:
    ca = tmp / "ca.pem"
    key = tmp / f"{name}.key"
    ca.write_text("CA CERT\n")
    key.write_text(f"PRIVATE KEY OF {name}\n")
    return NodeLaunch(superlink="203.0.113.5:8000", ca_cert=ca, node_key=key,
                      data_dir=f"/data/{name}")
