"""Stopping everything a local stack started, and setting aside the state files it cannot read.

Best effort by design: what is recorded is stopped by PID, what is not (a crash's orphans) by the
stack's marker; an unreadable file is moved to ``<file>.corrupt-<time>`` so the next ``up``
starts clean. The caller holds the stack's lock. See fedcloud/local/README.md.
"""

from __future__ import annotations

import contextlib
import os
import signal
import time
from dataclasses import dataclass, field
from pathlib import Path

from fedcloud.core.errors import OrchestratorError
from fedcloud.core.stack import StackConfig
from fedcloud.local.state import (
    STOP_TIMEOUT_S,
    StateFileError,
    as_pid,
    marker_value,
    read_state,
    set_aside,
    shown,
    stop_marked,
)
from fl.orchestrator.rotation import QUEUE_DIR, QueueStore, read_queue

STATE_FILE = "local.json"
OUTPUTS_FILE = "outputs.json"
VMS_DIR = "vms"


@dataclass
class DownReport:
    """What a clean-up did.

    Attributes:
        recorded: SuperLink process groups and VMs stopped from the records.
        orphans: Processes stopped because they carried the stack's marker and no record.
        notes: One line per file skipped or set aside, or entry that could not be used.
    """

    recorded: int = 0
    orphans: int = 0
    notes: list[str] = field(default_factory=list)

    @property
    def stopped(self) -> int:
        """Everything stopped."""
        return self.recorded + self.orphans


def _fix(cfg: StackConfig) -> str:
    return f"run `fedcloud down --stack {cfg.stack}`: it sets the file aside."


def _aside(path: Path, problem: str, report: DownReport) -> None:
    try:
        report.notes.append(f"{problem} Moved it to {set_aside(path)}.")
    except OSError as exc:
        report.notes.append(f"{problem} It could not be moved aside ({exc.strerror}); "
                            f"remove {path} by hand.")


def _pid_alive(pid: int) -> bool:
    with contextlib.suppress(ChildProcessError, OSError):
        if os.waitpid(pid, os.WNOHANG)[0] == pid:  # our child (a SuperLink of this process)
            return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(
            errors="replace")
    except OSError:
        return ""


def _stop_superlink(pid: int, state: Path) -> bool:
    """Stop the process group led by ``pid`` if it still runs this stack's SuperLink."""
    line = _cmdline(pid)
    if not _pid_alive(pid) or "flower-superlink" not in line or marker_value(state) not in line:
        return False  # gone, or the PID now belongs to another process
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, signal.SIGTERM)
    deadline = time.monotonic() + STOP_TIMEOUT_S
    while time.monotonic() < deadline and _pid_alive(pid):
        time.sleep(0.1)
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, signal.SIGKILL)
    return True


def _stop_recorded(cfg: StackConfig, report: DownReport) -> None:
    """Stop the SuperLink ``local.json`` names, then drop the record."""
    path = cfg.state_dir / STATE_FILE
    try:
        record = read_state(path, "the local stack's record", _fix(cfg))
    except StateFileError as exc:
        _aside(path, exc.message, report)
        return
    if record is None:
        return
    link = record.get("superlink")
    if link is not None:
        raw = link.get("pid") if isinstance(link, dict) else link
        pid = as_pid(raw)
        if pid is None:
            report.notes.append(f"{path}: superlink.pid {shown(raw)} is not a process id; "
                                "skipped it (the SuperLink is found by the stack's marker).")
        elif _stop_superlink(pid, cfg.state_dir):
            report.recorded += 1
    path.unlink(missing_ok=True)


def _stop_vms(cfg: StackConfig, report: DownReport) -> None:
    """Stop the VMs of every ``<state>/vms/<participant>/emulated.json``."""
    from fedcloud.local.emulated import EmulatedCloud

    vms = cfg.state_dir / VMS_DIR
    if os.path.lexists(vms) and not vms.is_dir():
        _aside(vms, f"{vms} is not a directory (the emulated VMs' directory).", report)
        return
    if not vms.is_dir():
        return
    for root in sorted(p for p in vms.iterdir() if p.is_dir() and not p.is_symlink()):
        try:
            stopped, skipped = EmulatedCloud.stop_from_state(root)
        except StateFileError as exc:
            _aside(exc.path, exc.message, report)
            continue
        report.recorded += stopped
        report.notes.extend(skipped)


def _check_files(cfg: StackConfig, report: DownReport) -> None:
    """Set aside queue files and ``outputs.json`` that the next ``up`` could not read."""
    queues = cfg.state_dir / QUEUE_DIR
    if os.path.lexists(queues) and not queues.is_dir():
        _aside(queues, f"{queues} is not a directory (the round-robin queues).", report)
    elif queues.is_dir():
        for path in sorted(queues.glob("queue-*.json")):
            try:
                read_queue(path)
            except OrchestratorError as exc:
                _aside(path, exc.message, report)
    outputs = cfg.state_dir / OUTPUTS_FILE
    try:
        read_state(outputs, "the stack's outputs", _fix(cfg))
    except StateFileError as exc:
        _aside(outputs, exc.message, report)


def stop_all(cfg: StackConfig) -> DownReport:
    """Stop everything ever started for the stack and make its state directory usable again.

    Never raises for a state file: what cannot be read is skipped, set aside and reported.
    """
    report = DownReport()
    _stop_recorded(cfg, report)
    _stop_vms(cfg, report)
    report.orphans = stop_marked(cfg.state_dir)
    _check_files(cfg, report)
    return report


def check_up(cfg: StackConfig) -> None:
    """Check the state files ``up`` needs (the round-robin positions) before it acts.

    Raises:
        OrchestratorError: A participant's queue file cannot be read (names it and the fix).
    """
    store = QueueStore(cfg.state_dir)
    fix = (f"run `fedcloud down --stack {cfg.stack}` (it sets the file aside; the circle "
           "restarts at the first eligible VM), or delete it.")
    if os.path.lexists(store.dir) and not store.dir.is_dir():
        raise OrchestratorError(f"{store.dir} is not a directory (the round-robin queues).", fix)
    for p in cfg.participants:
        try:
            read_queue(store.path(p.name))
        except OrchestratorError as exc:
            raise OrchestratorError(exc.message, fix) from None
