"""Emulated private VMs: one real OpenSSH ``sshd`` per Active VM on its own loopback address.

Used by the local stack, the orchestrator's slow tests and ``benchmarks/orchestrator.py``: host
keys pinned, public-key login only, vCPUs and memory enforced, a fault rate per VM, nothing left
running after :meth:`EmulatedCloud.stop`. See fl/README.md, "Emulated VMs".
"""

from __future__ import annotations

import contextlib
import ipaddress
import os
import re
import resource
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from types import TracebackType
from typing import Any

from fedcloud.core.errors import OrchestratorError
from fedcloud.core.files import write_atomic, write_json_atomic
from fedcloud.core.participants import VmSpec
from fedcloud.local.state import StateFileError, as_pid, is_sshd_of, read_state, shown

SSHD_START_TIMEOUT_S = 10.0
"""Wait for a new sshd to accept TCP connections."""
SSHD_STOP_TIMEOUT_S = 5.0
"""Wait for sshd to exit after SIGTERM before SIGKILL."""
KILL_ROUNDS = 20
"""Passes over /proc when killing a VM's processes (a supervisor may fork in between)."""
KILL_PAUSE_S = 0.05
ADDRESS_PREFIX = "127.0.1."
PORT_ATTEMPTS = 5
"""Tries at starting sshd on a fresh free port (another process may take the port first)."""
STATE_FILE = "emulated.json"
MARKER_ENV = "FEDCLOUD_EMULATED_VM"
SUPERNODE_WRAPPED = "flower-supernode"
_TOKEN = re.compile(r"[0-9a-f]{32}")
_VENV_BIN = Path(sys.executable).parent


def sshd_path() -> str:
    """Return the ``sshd`` binary, or raise an error that says how to install it."""
    found = shutil.which("sshd") or ("/usr/sbin/sshd" if Path("/usr/sbin/sshd").exists() else None)
    if found is None:
        raise OrchestratorError("OpenSSH's sshd is not installed; emulated VMs need it.",
                                "run 'make test-deps' (or: apt-get install -y openssh-server).")
    return found


@dataclass(frozen=True)
class VmRequest:
    """One VM as the participant's private cloud declares it (the orchestrator's VM table)."""

    id: str
    state: str
    vcpus: float | None = None
    memory_gb: float | None = None
    disk_gb: float | None = None
    host: str | None = None
    """Loopback address to use (the stack's ``host``); default: the next ``127.0.1.x``."""


@dataclass
class EmulatedVm:
    """A running (or deliberately absent) emulated VM."""

    spec: VmSpec
    root: Path
    token: str
    pid: int | None = None

    @property
    def fault_file(self) -> Path:
        """The file the ``flower-supernode`` wrapper reads its failure rate from (per mille)."""
        return self.root / "fault-permille"

    @property
    def fault_log(self) -> Path:
        """One line per injected start failure."""
        return self.root / "faults.log"


def _free_port(host: str) -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def _run(argv: Sequence[str]) -> str:
    done = subprocess.run(list(argv), capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise OrchestratorError(f"'{' '.join(argv)}' failed: {done.stderr.strip()}",
                                "check that openssh-client (ssh-keygen) is installed.")
    return done.stdout


def _keygen(path: Path, comment: str) -> None:
    _run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", comment, "-f", str(path)])


def key_fingerprint(public_key: Path) -> str:
    """Return the ``SHA256:...`` fingerprint of an OpenSSH public key file (``ssh-keygen -lf``)."""
    return _run(["ssh-keygen", "-l", "-E", "sha256", "-f", str(public_key)]).split()[1]


def _wait_listening(host: str, port: int, proc: subprocess.Popen[bytes], timeout_s: float) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            return False
        with contextlib.suppress(OSError), socket.create_connection((host, port), timeout=0.5):
            return True
        time.sleep(0.05)
    return False


def _limits(vcpus: float | None, memory_gb: float | None) -> Callable[[], None]:
    cpus = sorted(os.sched_getaffinity(0))
    keep = cpus if vcpus is None else cpus[: max(1, min(len(cpus), int(vcpus)))]
    limit = None if memory_gb is None else int(memory_gb * 1024**3)

    def apply() -> None:  # runs in the child before exec
        os.sched_setaffinity(0, keep)
        if limit is not None:
            resource.setrlimit(resource.RLIMIT_AS, (limit, limit))

    return apply


def _pids_with_marker(token: str) -> list[int]:
    needle = f"{MARKER_ENV}={token}".encode()
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            environ = (entry / "environ").read_bytes()
        except OSError:
            continue
        if needle in environ.split(b"\0"):
            found.append(int(entry.name))
    return found


def _kill_vm(pid: int | None, token: str) -> bool:
    """Kill the VM's sshd and every process carrying its token; return whether any ran."""
    found = False
    if pid is not None and _alive(pid):
        found = True
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + SSHD_STOP_TIMEOUT_S
        while time.monotonic() < deadline and _alive(pid):
            time.sleep(KILL_PAUSE_S)
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    for _ in range(KILL_ROUNDS):
        pids = [p for p in _pids_with_marker(token) if p != os.getpid()]
        if not pids:
            break
        found = True
        for p in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(p, signal.SIGKILL)
        time.sleep(KILL_PAUSE_S)
    return found


def _alive(pid: int) -> bool:
    try:
        # Reap it if it is our child (sshd started by this process).
        waited, _ = os.waitpid(pid, os.WNOHANG)
        if waited == pid:
            return False
    except ChildProcessError:
        pass
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    status = Path(f"/proc/{pid}/status")
    with contextlib.suppress(OSError):
        if "\nState:\tZ" in status.read_text():
            return False
    return True


# The values are shell-quoted (shlex.quote) before they are put in.
_SUPERNODE_WRAPPER = """#!/bin/sh
# An emulated VM's flower-supernode (fedcloud/local/emulated.py): fails the start with the
# probability (per mille) in the VM's fault file, as a VM with a broken runtime would.
fault_file={fault_file}
if [ -s "$fault_file" ]; then
  rate=$(cat "$fault_file")
  draw=$(od -An -N2 -tu2 /dev/urandom | tr -d ' ')
  if [ $((draw % 1000)) -lt "$rate" ]; then
    printf 'emulated fault on %s: flower-supernode failed to start\\n' {vm_id} >&2
    echo "$(date +%s) fault" >> {fault_log}
    exit 70
  fi
fi
exec {target} "$@"
"""

_PYTHON_WRAPPER = """#!/bin/sh
exec {target} "$@"
"""


class EmulatedCloud:
    """A set of emulated private VMs under one directory.

    Args:
        root: Directory for every VM's keys, config, logs, work dir and venv shims.
        address_prefix: First three octets of the VMs' loopback addresses.
        first_host: Last octet of the first VM's address.
        marker_env: Put in the environment of every sshd and every process started through it.
    """

    def __init__(self, root: Path, address_prefix: str = ADDRESS_PREFIX,
                 first_host: int = 1, marker_env: Mapping[str, str] | None = None) -> None:
        self.root = root
        self.address_prefix = address_prefix
        self.first_host = first_host
        self.marker_env = dict(marker_env or {})
        self.vms: dict[str, EmulatedVm] = {}
        self.user_key = root / "id_ed25519"

    def __enter__(self) -> EmulatedCloud:
        return self

    def __exit__(self, et: type[BaseException] | None, ev: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()

    def start(self, requests: Sequence[VmRequest], work_dir_name: str = "work",
              ) -> tuple[VmSpec, ...]:
        """Create and start the VMs; Active ones get a running sshd.

        Args:
            requests: The VMs, in the order their addresses are assigned.
            work_dir_name: Name of each VM's work directory (under its own directory).

        Returns:
            The inventory entries (host, port, user ``root``, key, pinned fingerprint, declared
            state and spec, venv, work dir), in request order.

        Raises:
            OrchestratorError: sshd is missing or does not start.
        """
        ids = [req.id for req in requests]
        clash = sorted({i for i in ids if ids.count(i) > 1 or i in self.vms})
        if clash:
            raise OrchestratorError(f"emulated VM id {clash[0]} is used twice in {self.root}.",
                                    "give each VM of one EmulatedCloud its own id (use one "
                                    "EmulatedCloud per participant).")
        sshd = sshd_path()
        self.root.mkdir(parents=True, exist_ok=True)
        os.chmod(self.root, 0o700)
        # sshd's privilege separation directory (absent until the package's service first ran).
        Path("/run/sshd").mkdir(mode=0o755, parents=True, exist_ok=True)
        if not self.user_key.exists():
            _keygen(self.user_key, "fedcloud-emulated-operator")
        user_pub = self.user_key.with_suffix(".pub").read_text()
        specs = []
        try:
            for i, req in enumerate(requests, start=len(self.vms)):
                host = req.host or f"{self.address_prefix}{self.first_host + i}"
                if not _is_loopback(host):
                    raise OrchestratorError(f"emulated VM {req.id}: host {host} is not a "
                                            "loopback address.",
                                            "use 127.0.1.x addresses for emulated VMs.")
                vm = self._start_one(sshd, req, host, user_pub, work_dir_name)
                self.vms[req.id] = vm
                specs.append(vm.spec)
        finally:
            self._save()
        return tuple(specs)

    def _start_one(self, sshd: str, req: VmRequest, host: str, user_pub: str,
                   work_dir_name: str) -> EmulatedVm:
        vm_root = Path(tempfile.mkdtemp(prefix=f"{req.id}-", dir=self.root))
        work = vm_root / work_dir_name
        work.mkdir()
        venv = self._venv_shims(vm_root, req.id)
        token = uuid.uuid4().hex
        host_key = vm_root / "ssh_host_ed25519_key"
        _keygen(host_key, f"{req.id}-host")
        spec = VmSpec(
            id=req.id, host=host, port=_free_port(host), user="root", key_path=self.user_key,
            host_key_fingerprint=key_fingerprint(host_key.with_suffix(".pub")), state=req.state,
            vcpus=req.vcpus, memory_gb=req.memory_gb, disk_gb=req.disk_gb,
            venv=str(venv), work_dir=str(work),
        )
        vm = EmulatedVm(spec=spec, root=vm_root, token=token)
        if req.state != "Active":
            return vm  # Inactive: nothing listens on that address and port.
        (vm_root / "authorized_keys").write_text(user_pub)
        os.chmod(vm_root / "authorized_keys", 0o600)
        for _ in range(PORT_ATTEMPTS):
            config = vm_root / "sshd_config"
            config.write_text(self._sshd_config(vm, host_key))
            proc = subprocess.Popen(
                [sshd, "-D", "-f", str(config), "-E", str(vm_root / "sshd.log")],
                stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                env={**os.environ, **self.marker_env}, start_new_session=True,
                preexec_fn=_limits(req.vcpus, req.memory_gb),
            )
            if _wait_listening(host, vm.spec.port, proc, SSHD_START_TIMEOUT_S):
                vm.pid = proc.pid
                return vm
            proc.kill()
            proc.wait()
            vm.spec = replace(vm.spec, port=_free_port(host))
        log_tail = (vm_root / "sshd.log").read_text(errors="replace")[-400:]
        raise OrchestratorError(f"emulated VM {req.id}: sshd did not start on {host}: {log_tail}",
                                f"read {vm_root / 'sshd.log'}.")

    def _sshd_config(self, vm: EmulatedVm, host_key: Path) -> str:
        marks = [_sshd_quoted(f"{k}={v}") for k, v in sorted(self.marker_env.items())]
        return "\n".join([
            f"ListenAddress {vm.spec.host}",
            f"Port {vm.spec.port}",
            f"HostKey {_sshd_path(host_key)}",
            f"PidFile {_sshd_path(vm.root / 'sshd.pid')}",
            # AuthorizedKeysFile expands %-tokens: a literal % is written %%.
            f"AuthorizedKeysFile {_sshd_path(vm.root / 'authorized_keys', tokens=True)}",
            "PermitRootLogin prohibit-password",
            "PubkeyAuthentication yes",
            "PasswordAuthentication no",
            "KbdInteractiveAuthentication no",
            "UsePAM no",
            # The VM's files live under a shared temp tree; its permissions are ours, not a user's.
            "StrictModes no",
            "UseDNS no",
            "AllowUsers root",
            "MaxStartups 200:30:400",
            "MaxSessions 50",
            "Subsystem sftp internal-sftp",
            " ".join(["SetEnv", f"{MARKER_ENV}={vm.token}", *(m for m in marks if m)]),
            "LogLevel ERROR",
            "",
        ])

    @staticmethod
    def _venv_shims(vm_root: Path, vm_id: str) -> Path:
        venv = vm_root / "venv"
        bin_dir = venv / "bin"
        bin_dir.mkdir(parents=True)
        fault_file, fault_log = vm_root / "fault-permille", vm_root / "faults.log"
        for exe in sorted(_VENV_BIN.iterdir()):
            name = exe.name
            if name == SUPERNODE_WRAPPED:
                text = _SUPERNODE_WRAPPER.format(
                    vm_id=shlex.quote(vm_id), fault_file=shlex.quote(str(fault_file)),
                    fault_log=shlex.quote(str(fault_log)), target=shlex.quote(str(exe)))
            elif name.startswith("python"):
                text = _PYTHON_WRAPPER.format(target=shlex.quote(str(exe)))
            elif name.startswith(("flwr", "flower-")):
                (bin_dir / name).symlink_to(exe)
                continue
            else:
                continue
            (bin_dir / name).write_text(text)
            os.chmod(bin_dir / name, 0o755)
        return venv

    def vm(self, vm_id: str) -> EmulatedVm:
        """Return one VM by id."""
        return self.vms[vm_id]

    def inventory(self) -> tuple[VmSpec, ...]:
        """Return every VM's inventory entry, in start order."""
        return tuple(vm.spec for vm in self.vms.values())

    def set_fault_rate(self, vm_id: str, probability: float) -> None:
        """Make the VM's ``flower-supernode`` fail each start with ``probability`` (0 to 1)."""
        permille = round(max(0.0, min(1.0, probability)) * 1000)
        vm = self.vms[vm_id]
        write_atomic(vm.fault_file, f"{permille}\n".encode())

    def faults_injected(self, vm_id: str) -> int:
        """Return how many starts the VM's fault wrapper has failed so far."""
        path = self.vms[vm_id].fault_log
        return len(path.read_text().splitlines()) if path.exists() else 0

    def crash(self, vm_id: str) -> None:
        """Power the VM off: kill its sshd and every process started through it."""
        vm = self.vms[vm_id]
        _kill_vm(vm.pid, vm.token)
        vm.pid = None
        self._save()

    def stop(self) -> None:
        """Stop every VM (sshd and all processes started through it)."""
        for vm in self.vms.values():
            _kill_vm(vm.pid, vm.token)
            vm.pid = None
        self._save()

    def _save(self) -> None:
        if not self.root.exists():
            return
        doc: dict[str, Any] = {"vms": [
            {"id": vm.spec.id, "pid": vm.pid, "token": vm.token, "root": str(vm.root),
             "spec": {k: str(v) if isinstance(v, Path) else v
                      for k, v in asdict(vm.spec).items()}}
            for vm in self.vms.values()]}
        write_json_atomic(self.root / STATE_FILE, doc)

    @staticmethod
    def stop_from_state(root: Path) -> tuple[int, list[str]]:
        """Stop the VMs recorded in ``<root>/emulated.json`` (by another process).

        Each by its token, and its ``sshd`` by PID if that PID still runs an sshd of ``root``.
        Returns how many were running and one line per unusable entry; raises
        :class:`StateFileError` if the file is unreadable (the caller sets it aside).
        """
        path = root / STATE_FILE
        fix = f"run `fedcloud down` (it sets {path.name} aside) or delete {path}."
        vms = (read_state(path, "an emulated VM list", fix) or {"vms": []}).get("vms")
        if not isinstance(vms, list):
            raise StateFileError(path, f"{path} has no list of VMs under 'vms'.", fix)
        count, skipped = 0, []
        for i, item in enumerate(vms):
            token = item.get("token") if isinstance(item, dict) else None
            if not isinstance(token, str) or not _TOKEN.fullmatch(token):
                skipped.append(f"{path}: entry {i} is not a VM record with a token; skipped it.")
                continue
            if (pid := as_pid(item.get("pid"))) is None and item.get("pid") is not None:
                skipped.append(f"{path}: entry {i}: pid {shown(item.get('pid'))} is not a "
                               "process id; stopped that VM by its token only.")
            count += _kill_vm(pid if pid is not None and is_sshd_of(pid, root) else None, token)
            item["pid"] = None
        if vms:
            write_json_atomic(path, {"vms": vms})
        return count, skipped


def _sshd_quoted(pair: str) -> str | None:
    """``pair`` as one quoted word of sshd_config (``None`` if it holds a control character)."""
    quoted = pair.replace("\\", "\\\\").replace('"', '\\"')
    return f'"{quoted}"' if pair.isprintable() else None


def _sshd_path(path: Path, tokens: bool = False) -> str:
    """A path as one quoted sshd_config word (a state dir may hold spaces or quotes)."""
    quoted = _sshd_quoted(str(path).replace("%", "%%") if tokens else str(path))
    if quoted is None:
        raise OrchestratorError(f"{path}: an emulated VM's path holds a control character.",
                                "use a state directory without control characters.")
    return quoted


def _is_loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def brief_vms(prefix: str = "vm") -> list[VmRequest]:
    """Return the orchestrator experiment's five reference VMs (3 Active, 2 Inactive).

    vm-004's spec is "any" in the experiment's table; it is declared like vm-002. vm-005 is
    "below the minimum spec": 1 vCPU, 0.25 GB, 8 GB disk.
    """
    return [
        VmRequest(f"{prefix}-001", "Active", 4, 8, 40),
        VmRequest(f"{prefix}-002", "Active", 2, 4, 20),
        VmRequest(f"{prefix}-003", "Inactive", 8, 16, 80),
        VmRequest(f"{prefix}-004", "Inactive", 2, 4, 20),
        VmRequest(f"{prefix}-005", "Active", 1, 0.25, 8),
    ]


def stack_entries(specs: Sequence[VmSpec]) -> list[dict[str, Any]]:
    """Return inventory entries in the stack file's ``vms:`` format (for the local stack)."""
    out = []
    for s in specs:
        out.append({
            "id": s.id, "host": s.host, "port": s.port, "user": s.user,
            "keyPath": str(s.key_path) if s.key_path else None,
            "hostKeyFingerprint": s.host_key_fingerprint, "state": s.state,
            "vcpus": s.vcpus, "memoryGb": s.memory_gb, "diskGb": s.disk_gb,
            "venv": s.venv, "workDir": s.work_dir,
        })
    return out
