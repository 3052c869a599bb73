"""Live probes of the participants' VMs over SSH, all in parallel, each bounded by timeouts.

One short remote command per VM reports what the private cloud's declaration cannot: vCPUs
(``nproc``, which honours CPU affinity), memory (``MemTotal``, or the address-space limit when one
is set, read from ``/proc/self/limits``), free disk in the work directory, and the Python and
``flwr`` versions of the VM's venv. An unreachable VM costs at most
:data:`fl.orchestrator.ssh.CONNECT_TIMEOUT_S` (plus the banner and auth timeouts) in its own
thread; the others do not wait for it.
"""

from __future__ import annotations

import re
import shlex
import time
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor, wait
from dataclasses import dataclass

from fedcloud.core.participants import VmSpec
from fl.orchestrator.scripts import parse_fields, work_dir
from fl.orchestrator.ssh import COMMAND_TIMEOUT_S, SshError, Transport

PROBE_COMMAND_TIMEOUT_S = 15.0
"""Bound on the probe command itself (a Python start-up plus ``df``)."""
PROBE_DEADLINE_S = 45.0
"""Bound on a whole parallel probe round; a VM still unanswered then counts as unreachable."""
MAX_PROBE_WORKERS = 32
"""Parallel probes at most (threads; each is mostly waiting on the network)."""

_PY_VERSIONS = (
    "import sys, importlib.metadata as m\n"
    "print('python=%d.%d.%d' % sys.version_info[:3])\n"
    "try:\n"
    "    print('flwr=' + m.version('flwr'))\n"
    "except m.PackageNotFoundError:\n"
    "    print('flwr=')\n"
)


@dataclass(frozen=True)
class ProbeResult:
    """What one VM reported (or why it could not).

    Attributes:
        vm_id: The VM.
        reachable: Connected, authenticated and the probe command ran.
        error: Why not (one line), when not reachable.
        error_kind: The failing step (``connect``, ``hostkey``, ``auth``, ``timeout``...).
        vcpus: CPUs usable by the VM user.
        memory_gb: Memory (GiB), the lower of ``MemTotal`` and the address-space limit.
        disk_free_gb: Free space (GiB) in the work directory's file system.
        python: Python version of the VM's venv (``3.11.2``).
        flwr: ``flwr`` version there, ``""`` when not installed.
        elapsed_s: Wall time of the probe.
    """

    vm_id: str
    reachable: bool
    error: str | None = None
    error_kind: str | None = None
    vcpus: int | None = None
    memory_gb: float | None = None
    disk_free_gb: float | None = None
    python: str | None = None
    flwr: str | None = None
    elapsed_s: float = 0.0


def major_minor(version: str) -> tuple[int, int] | None:
    """Return ``(major, minor)`` of a version string, or ``None`` if it has no such prefix."""
    match = re.match(r"(\d+)\.(\d+)", version.strip())
    return (int(match.group(1)), int(match.group(2))) if match else None


def flwr_compatible(vm_version: str | None, superlink_version: str) -> bool:
    """Return whether a VM's flwr shares major.minor with the SuperLink's (Flower's rule)."""
    if not vm_version:
        return False
    mine, theirs = major_minor(vm_version), major_minor(superlink_version)
    return mine is not None and mine == theirs


def probe_command(vm: VmSpec) -> str:
    """Return the POSIX shell command that prints the probe's ``key=value`` lines."""
    python = f"{vm.venv}/bin/python" if vm.venv else "python3"
    work = shlex.quote(work_dir(vm))
    # The address-space limit (RLIMIT_AS) as the kernel reports it: "unlimited" or bytes. Read
    # from /proc rather than with `ulimit -v`, which POSIX sh does not define.
    return "\n".join([
        f"mkdir -p {work}",
        'echo "vcpus=$(nproc)"',
        "echo \"mem_kb=$(awk '/^MemTotal:/ {print $2}' /proc/meminfo)\"",
        "echo \"as_bytes=$(awk '/^Max address space/ {print $4}' /proc/self/limits)\"",
        f"echo \"disk_kb=$(df -Pk {work} | awk 'NR==2 {{print $4}}')\"",
        f"{shlex.quote(python)} -c {shlex.quote(_PY_VERSIONS)}",
        "",
    ])


def parse_probe(vm_id: str, stdout: str, elapsed_s: float = 0.0) -> ProbeResult:
    """Parse the probe command's output into a :class:`ProbeResult` (a pure function)."""
    fields = parse_fields(stdout)

    def num(key: str) -> float | None:
        try:
            return float(fields[key])
        except (KeyError, ValueError):
            return None

    mem_kb = num("mem_kb")
    as_bytes = num("as_bytes")  # "unlimited" parses as None
    if mem_kb is not None and as_bytes is not None:
        mem_kb = min(mem_kb, as_bytes / 1024)
    disk_kb = num("disk_kb")
    vcpus = num("vcpus")
    return ProbeResult(
        vm_id=vm_id, reachable=True,
        vcpus=int(vcpus) if vcpus is not None else None,
        memory_gb=mem_kb / 1024**2 if mem_kb is not None else None,
        disk_free_gb=disk_kb / 1024**2 if disk_kb is not None else None,
        python=fields.get("python") or None,
        flwr=fields.get("flwr"),
        elapsed_s=elapsed_s,
    )


def probe_vm(transport: Transport, vm: VmSpec,
             timeout_s: float = PROBE_COMMAND_TIMEOUT_S) -> ProbeResult:
    """Probe one VM; never raises for an SSH failure (it is reported in the result)."""
    start = time.monotonic()
    try:
        with transport.connect(vm) as session:
            res = session.run(probe_command(vm), timeout_s=min(timeout_s, COMMAND_TIMEOUT_S))
    except SshError as exc:
        return ProbeResult(vm_id=vm.id, reachable=False, error=exc.message, error_kind=exc.kind,
                           elapsed_s=time.monotonic() - start)
    if not res.ok and "vcpus=" not in res.stdout:
        return ProbeResult(vm_id=vm.id, reachable=False, error_kind="command",
                           error=f"probe command failed on {vm.id}: {res.tail()}",
                           elapsed_s=time.monotonic() - start)
    return parse_probe(vm.id, res.stdout, time.monotonic() - start)


def probe_all(transport: Transport, vms: Mapping[str, VmSpec] | Sequence[VmSpec],
              deadline_s: float = PROBE_DEADLINE_S) -> dict[str, ProbeResult]:
    """Probe every VM in parallel.

    Args:
        transport: SSH transport (real or scripted).
        vms: The VMs, keyed as the caller wants the results (a sequence is keyed by VM id;
            participants may reuse VM ids, so the orchestrator keys by ``participant/id``).
        deadline_s: A VM not answered by then is reported unreachable (``timeout``).

    Returns:
        Key to result, for every VM given.
    """
    keyed = dict(vms) if isinstance(vms, Mapping) else {vm.id: vm for vm in vms}
    if not keyed:
        return {}
    pool = ThreadPoolExecutor(max_workers=min(MAX_PROBE_WORKERS, len(keyed)),
                              thread_name_prefix="probe")
    try:
        futures = {key: pool.submit(probe_vm, transport, vm) for key, vm in keyed.items()}
        wait(futures.values(), timeout=deadline_s)
        out: dict[str, ProbeResult] = {}
        for key, future in futures.items():
            vm = keyed[key]
            if future.done():
                out[key] = future.result()  # re-raises a bug; SSH failures are in the result
            else:
                out[key] = ProbeResult(vm_id=vm.id, reachable=False, error_kind="timeout",
                                         error=f"no probe answer within {deadline_s:g} s",
                                         elapsed_s=deadline_s)
        return out
    finally:
        # Do not wait for a stuck probe: its own timeouts end it in the background.
        pool.shutdown(wait=False, cancel_futures=True)

