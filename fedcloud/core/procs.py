"""Local Flower processes owned by this program: started in their own process group, stopped by id.

Flower processes spawn children (the SuperLink its ``flower-superexec`` and ServerApp, a
SuperNode one ``flwr-clientapp`` per message), so stopping one means signalling its process
group, never matching names.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import IO

STOP_TIMEOUT_S = 15.0


@dataclass
class ManagedProcess:
    """A child process group with its log file.

    Attributes:
        argv: The command line.
        log_path: Where stdout and stderr go.
        proc: The process (leader of its own session/group).
    """

    argv: list[str]
    log_path: Path
    proc: subprocess.Popen[bytes]
    _log_handle: IO[bytes] | None = field(default=None, repr=False)

    @property
    def pid(self) -> int:
        """Process id (also the process group id)."""
        return self.proc.pid

    def alive(self) -> bool:
        """Return whether the process group leader is still running."""
        return self.proc.poll() is None

    def log_text(self) -> str:
        """Return the whole log (empty if unreadable)."""
        try:
            return self.log_path.read_text(encoding="utf-8", errors="replace")
        except OSError:
            return ""

    def log_tail(self, lines: int = 20) -> str:
        """Return the last ``lines`` lines of the log (for error messages)."""
        return "\n".join(self.log_text().splitlines()[-lines:])

    def _signal_group(self, sig: signal.Signals) -> None:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.proc.pid, sig)

    def kill(self) -> None:
        """SIGKILL the whole group at once (a crash, as the failure tests need)."""
        self._signal_group(signal.SIGKILL)
        self.proc.wait(timeout=STOP_TIMEOUT_S)
        self._close_log()

    def stop(self, timeout_s: float = STOP_TIMEOUT_S) -> int | None:
        """SIGTERM the group, then SIGKILL what is left after ``timeout_s``."""
        if self.proc.poll() is None:
            self._signal_group(signal.SIGTERM)
            try:
                self.proc.wait(timeout=timeout_s)
            except subprocess.TimeoutExpired:
                self._signal_group(signal.SIGKILL)
                self.proc.wait(timeout=timeout_s)
        # Children (a ServerApp, a ClientApp) may outlive the group leader: clear the group.
        self._signal_group(signal.SIGKILL)
        self._close_log()
        return self.proc.returncode

    def _close_log(self) -> None:
        if self._log_handle is not None:
            self._log_handle.close()
            self._log_handle = None

    def __enter__(self) -> ManagedProcess:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()


def spawn(argv: Sequence[str], env: Mapping[str, str], log_path: Path,
          cwd: Path | None = None) -> ManagedProcess:
    """Start ``argv`` in a new session with output appended to ``log_path``."""
    log_path.parent.mkdir(parents=True, exist_ok=True)
    handle = open(log_path, "ab")  # noqa: SIM115 - owned by the ManagedProcess
    try:
        proc = subprocess.Popen(list(argv), stdout=handle, stderr=subprocess.STDOUT,
                                env=dict(env), cwd=cwd, start_new_session=True)
    except OSError:
        handle.close()
        raise
    return ManagedProcess(argv=list(argv), log_path=log_path, proc=proc, _log_handle=handle)
