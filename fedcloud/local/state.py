"""The local stack's state directory: its lock, its files read without trust, its processes.

One ``flock`` per directory serialises ``up`` and ``down``; state files are read bounded and
checked, and an unreadable one is set aside; every process the stack starts carries
``FEDCLOUD_STACK_STATE=<state dir>`` so that ``down`` finds it even when no file names it.
See fedcloud/local/README.md.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import errno
import fcntl
import json
import os
import shlex
import signal
import stat
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from fedcloud.core.errors import ConfigError, FedcloudError
from fedcloud.core.files import MIB_BYTES, read_bounded, short

LOCK_FILE = ".lock"
STATE_MAX_BYTES = 4 * MIB_BYTES
"""The largest state file read (``outputs.json`` with its ``lastGood`` is a few KiB)."""
MARKER_ENV = "FEDCLOUD_STACK_STATE"
"""In the environment of every process the local stack starts: the state directory."""
STOP_TIMEOUT_S = 10.0
KILL_ROUNDS = 20
KILL_PAUSE_S = 0.05
PID_MAX = 1 << 22
_HOLDER_MAX_BYTES = 4096


class StateFileError(FedcloudError):
    """A state file cannot be read or is not what it should be (``path`` names it)."""

    def __init__(self, path: Path, message: str, fix: str | None = None) -> None:
        self.path = path
        super().__init__(message, fix)


class StackBusy(FedcloudError):
    """Another ``up`` or ``down`` holds the stack's lock."""


def marker_value(state: Path) -> str:
    """The value of :data:`MARKER_ENV` for the stack whose state directory is ``state``."""
    return os.path.abspath(state)


def marker_env(state: Path) -> dict[str, str]:
    """The marker as an environment mapping (for a child's environment)."""
    return {MARKER_ENV: marker_value(state)}


def create_state_dir(state: Path) -> bool:
    """Create the state directory with mode 0700 if it is absent; return whether it was created.

    An existing directory keeps its mode (it may be shared on purpose).

    Raises:
        ConfigError: The path exists and is not a directory.
    """
    if not state.is_dir():
        if os.path.lexists(state):
            raise ConfigError(f"fedcloud:stateDir {state} exists and is not a directory.",
                              "set fedcloud:stateDir to a directory, or move that file away.")
        state.parent.mkdir(parents=True, exist_ok=True)
        with contextlib.suppress(FileExistsError):
            state.mkdir(mode=0o700)
            os.chmod(state, 0o700)  # exactly 0700, whatever the umask
            return True
    return False


def set_aside(path: Path) -> Path:
    """Rename an unreadable state file (or directory) to ``<name>.corrupt-<time>``; return it."""
    stamp = dt.datetime.now().strftime("%Y%m%dT%H%M%S")
    dest = path.with_name(f"{path.name}.corrupt-{stamp}")
    n = 1
    while os.path.lexists(dest):
        n += 1
        dest = path.with_name(f"{path.name}.corrupt-{stamp}-{n}")
    path.rename(dest)
    return dest


def read_state(path: Path, what: str, fix: str) -> dict[str, Any] | None:
    """Return the JSON object in the state file ``path``; ``None`` if there is no such file.

    Raises:
        StateFileError: Not a bounded regular file, not UTF-8, not JSON, or not an object.
    """
    if not os.path.lexists(path):
        return None
    try:
        data = read_bounded(path, STATE_MAX_BYTES, what, fix=fix)
    except FedcloudError as exc:
        raise StateFileError(path, exc.message, fix) from None
    try:
        doc = json.loads(data.decode("utf-8"))
    except UnicodeDecodeError as exc:
        raise StateFileError(path, f"{path}: byte {exc.start} is not UTF-8 ({what} expected).",
                             fix) from None
    except (ValueError, RecursionError) as exc:
        reason = exc.msg if isinstance(exc, json.JSONDecodeError) else "nested too deep"
        raise StateFileError(path, f"{path} is not valid JSON ({short(reason, 80)}; {what} "
                             "expected).", fix) from None
    if not isinstance(doc, dict):
        raise StateFileError(path, f"{path} holds a JSON {type(doc).__name__}, not {what}.",
                             fix)
    return doc


def shown(value: Any) -> str:
    """A foreign value for a message: short, quoted if it is a string."""
    return f"'{short(value)}'" if isinstance(value, str) else short(value)


def as_pid(value: Any) -> int | None:
    """Return ``value`` if it can be a process id of another process, else ``None``."""
    if isinstance(value, int) and not isinstance(value, bool) and 1 < value < PID_MAX:
        return value
    return None


# --- the lock -------------------------------------------------------------------------------

def _open_lock(path: Path) -> int:
    flags = os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC
    try:
        fd = os.open(path, flags, 0o600)
    except OSError as exc:
        if exc.errno in (errno.EISDIR, errno.ELOOP, errno.ENXIO):
            raise StateFileError(path, f"{path} is not a regular file (the stack's lock file)."
                                 ) from None
        raise StateFileError(path, f"{path} cannot be opened ({exc.strerror}).",
                             f"check that the state directory {path.parent} is writable by "
                             "this user.") from None
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        raise StateFileError(path, f"{path} is not a regular file (the stack's lock file).")
    return fd


def _holder(fd: int) -> str:
    try:
        doc = json.loads(os.pread(fd, _HOLDER_MAX_BYTES, 0).decode("utf-8"))
        if not isinstance(doc, dict):
            raise ValueError
    except (OSError, ValueError):
        return "another process (it has not written its name yet)"
    pid, command, since = (short(doc.get(k), 60) for k in ("pid", "command", "startedAt"))
    return f"`{command}` (pid {pid}, started {since})"


@contextlib.contextmanager
def locked(state: Path, command: str, stack: str, *, set_aside_bad: bool = False,
           ) -> Iterator[list[str]]:
    """Hold the stack's lock (``<state>/.lock``, ``flock``, non-blocking) for the block.

    The holder's pid, command and start time are written into the lock file. The kernel
    releases the lock when the holder exits, even by ``kill -9``: no stale lock survives.

    Args:
        state: The state directory (it must exist).
        command: What holds it (``"fedcloud up"``), for the message a contender gets.
        stack: The stack's name, for messages.
        set_aside_bad: A lock path that is not a regular file is set aside (``down``) instead
            of refused (``up``).

    Yields:
        Lines saying what was set aside (empty when nothing was).

    Raises:
        StackBusy: Another process holds the lock (the message names it).
        StateFileError: The lock file is not a regular file and ``set_aside_bad`` is false.
    """
    path = state / LOCK_FILE
    notes: list[str] = []
    try:
        fd = _open_lock(path)
    except StateFileError as exc:
        if not set_aside_bad or not os.path.lexists(path):
            raise StateFileError(path, exc.message,
                                 exc.fix or f"run `fedcloud down --stack {stack}` (it sets "
                                 f"the file aside), or remove {path}.") from None
        notes.append(f"{exc.message} Moved it to {set_aside(path)}.")
        fd = _open_lock(path)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise StackBusy(f"stack '{stack}' is busy: {_holder(fd)} holds {path}.",
                            "wait for it to end, or stop it (Ctrl-C, or kill its pid: it stops "
                            "what it started), then run the command again.") from None
        info = {"pid": os.getpid(), "command": command,
                "argv": short(shlex.join(sys.argv), 200),
                "startedAt": dt.datetime.now().isoformat(timespec="seconds")}
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps(info).encode("utf-8"), 0)
        yield notes
    finally:
        os.close(fd)  # releases the flock


# --- processes by marker ----------------------------------------------------------------------

def marker_pids(state: Path) -> list[int]:
    """PIDs of this user's processes that carry the stack's marker (never this process).

    An ``sshd`` retitles itself over its environment block, so an ``sshd`` is known instead by
    its config under the state directory (``-f <state>/vms/.../sshd_config``).
    """
    needle = f"{MARKER_ENV}={marker_value(state)}".encode()
    uid, me = os.getuid(), os.getpid()
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == me:
            continue
        try:
            if entry.stat().st_uid != uid:
                continue
            environ = (entry / "environ").read_bytes()
        except OSError:
            continue
        if needle in environ.split(b"\0") or is_sshd_of(int(entry.name), state):
            found.append(int(entry.name))
    return found


def is_sshd_of(pid: int, root: Path) -> bool:
    """Whether ``pid`` runs an ``sshd`` started with a config under ``root`` (PID reuse)."""
    try:
        # sshd retitles itself ("sshd: /usr/sbin/sshd -D -f ... [listener]"): search the text.
        text = Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace")
    except OSError:
        return False
    return "sshd" in text and any(f"{r}/" in text for r in {str(root), os.path.abspath(root)})


def _signal(pid: int, sig: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.kill(pid, sig)
    with contextlib.suppress(ChildProcessError, OSError):
        os.waitpid(pid, os.WNOHANG)  # reap it if it is our child


def stop_marked(state: Path, timeout_s: float = STOP_TIMEOUT_S) -> int:
    """Stop every process carrying the stack's marker (SIGTERM, then SIGKILL); return how many."""
    seen: set[int] = set()
    pids = marker_pids(state)
    for pid in pids:
        _signal(pid, signal.SIGTERM)
    seen.update(pids)
    deadline = time.monotonic() + timeout_s
    while pids and time.monotonic() < deadline:
        time.sleep(KILL_PAUSE_S)
        for pid in pids:
            _signal(pid, signal.SIGCONT)  # a stopped process cannot act on SIGTERM
        pids = marker_pids(state)
        seen.update(pids)
    for _ in range(KILL_ROUNDS):  # a supervisor may fork in between
        if not pids:
            break
        for pid in pids:
            _signal(pid, signal.SIGKILL)
        time.sleep(KILL_PAUSE_S)
        pids = marker_pids(state)
        seen.update(pids)
    return len(seen)
