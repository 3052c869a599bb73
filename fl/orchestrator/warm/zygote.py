"""Warm ClientApp starts: one process per SuperNode that has imported what every ClientApp needs.

Started next to ``flower-supernode`` (same host, environment and process group), it listens on
a Unix socket (0600, and only this user's processes are served); the ``flwr-clientapp`` shim the
SuperExec launches sends it its command line, environment, working directory and standard
streams, and it forks a child that runs Flower's own ``flwr-clientapp`` entry point with them.
It exits when its parent (the shell that became the SuperNode) is gone. Stdlib, torch and flwr
only: it is shipped as text to the VM. See fl/README.md, "Warm ClientApp starts".
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import struct
import sys
import threading
from collections.abc import Callable

MAX_REQUEST = 1 << 20
ACCEPT_TIMEOUT_S = 0.5
READY_LINE = "warm ClientApp starter ready on"
STARTED_LINE = "warm ClientApp start, pid"
PRELOAD_NICE = 10
"""Nice increment of the import thread only (the main thread, which forks, keeps its own)."""


def preload() -> Callable[[], None]:
    """Import what a ClientApp process imports before it handles its message."""
    import numpy  # noqa: F401
    import torch  # noqa: F401
    from flwr.supernode.cli.flwr_clientapp import flwr_clientapp
    from flwr.supernode.runtime import run_clientapp  # noqa: F401

    return flwr_clientapp


def preload_in_background() -> Callable[[], None]:
    """:func:`preload` in a thread niced by :data:`PRELOAD_NICE`; return its entry point.

    Linux keeps a nice value per thread and a child inherits its forking thread's: the imports
    yield the CPU to the SuperNode's own start (what a dispatch waits for), and the ClientApps,
    forked by the main thread, run at the starter's own priority.
    """
    done: list[Callable[[], None]] = []
    failed: list[BaseException] = []

    def run() -> None:
        with contextlib.suppress(OSError):
            tid = threading.get_native_id()
            os.setpriority(os.PRIO_PROCESS, tid, os.getpriority(os.PRIO_PROCESS, tid)
                           + PRELOAD_NICE)
        try:
            done.append(preload())
        except BaseException as exc:  # re-raised in the main thread
            failed.append(exc)

    thread = threading.Thread(target=run, name="preload")
    thread.start()
    thread.join()
    if failed:
        raise failed[0]
    return done[0]


def serve(path: str, parent: int) -> None:
    """Fork one ClientApp per request on the socket at ``path`` until ``parent`` is gone."""
    entry = preload_in_background()
    signal.signal(signal.SIGCHLD, signal.SIG_IGN)  # children are reaped by the kernel
    with contextlib.suppress(FileNotFoundError):
        os.unlink(path)
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    old = os.umask(0o177)
    try:
        server.bind(path)
    finally:
        os.umask(old)
    server.listen(16)
    server.settimeout(ACCEPT_TIMEOUT_S)
    print(f"{READY_LINE} {path}", flush=True)
    try:
        while os.getppid() == parent:
            try:
                conn, _ = server.accept()
            except TimeoutError:
                continue
            with conn:
                if _same_user(conn):
                    _start(conn, server, entry)
    finally:
        with contextlib.suppress(OSError):
            os.unlink(path)


def _same_user(conn: socket.socket) -> bool:
    creds = conn.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    _pid, uid, _gid = struct.unpack("3i", creds)
    return uid == os.getuid()


def _start(conn: socket.socket, server: socket.socket, entry: Callable[[], None]) -> None:
    conn.settimeout(10)
    try:
        data, fds, _flags, _addr = socket.recv_fds(conn, MAX_REQUEST, 3)
        doc = json.loads(data.decode("utf-8"))
    except (OSError, ValueError):
        return
    if len(fds) != 3:
        for fd in fds:
            os.close(fd)
        return
    pid = os.fork()
    if pid == 0:
        _child(doc, fds, (conn, server), entry)
    for fd in fds:
        os.close(fd)
    print(f"{STARTED_LINE} {pid}", flush=True)
    with contextlib.suppress(OSError):
        conn.sendall(str(pid).encode())


def _child(doc: dict[str, object], fds: list[int], sockets: tuple[socket.socket, ...],
           entry: Callable[[], None]) -> None:
    """Become the ClientApp: its streams, directory, environment and command line; never return."""
    code = 1
    try:
        for sock in sockets:
            sock.close()
        for target, fd in enumerate(fds):
            os.dup2(fd, target)
            os.close(fd)
        signal.signal(signal.SIGCHLD, signal.SIG_DFL)
        os.chdir(str(doc["cwd"]))
        os.environ.clear()
        os.environ.update({str(k): str(v) for k, v in dict(doc["env"]).items()})  # type: ignore[call-overload]
        sys.argv = [str(a) for a in doc["argv"]]  # type: ignore[attr-defined]
        entry()
        code = 0
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else 1
    except BaseException:
        import traceback

        traceback.print_exc()
    finally:
        with contextlib.suppress(Exception):
            sys.stdout.flush()
            sys.stderr.flush()
        os._exit(code)


if __name__ == "__main__":
    serve(sys.argv[1], os.getppid())
