"""The Flower SuperLink: its command line (what the cloud bootstrap runs) and a local process.

Flower 1.41 serves everything on ONE port: the Fleet API (SuperNodes), the Control API (``flwr
run/ls/stop``, ``flwr supernode register``) and ``GET /health``. The Control API has no
authentication in open-source Flower, so the port must be firewalled to the participants' and the
operator's addresses (``infra/`` does that).

Secure by default: TLS with the deployment's server certificate, SuperNode authentication on, a
``--database`` file (so nodes keep their ids across a SuperLink restart) and no runtime
dependency installation (the SuperLink would otherwise ``uv sync`` each run's dependencies from
the internet). ``insecure=True`` exists only as an explicit, logged development switch.
"""

from __future__ import annotations

import logging
import shlex
import socket
import ssl
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType

from fedcloud.core.errors import TrainingError
from fedcloud.core.flower import default_executable, superlink_argv, venv_bin_env
from fedcloud.core.procs import ManagedProcess, spawn

log = logging.getLogger(__name__)

HEALTH_TIMEOUT_S = 60.0
HEALTH_POLL_S = 0.25
PROBE_TIMEOUT_S = 2.0
# The aggregator's systemd unit restarts the SuperLink 5 s after it dies (infra/cloudinit.py).
RESTART_S = 5.0
WATCH_POLL_S = 0.5


def health_ok(address: str, ca_cert: str | Path | None,
              timeout_s: float = PROBE_TIMEOUT_S) -> bool:
    """Return whether ``GET https://ADDRESS/health`` answers 200 (verifying TLS with ``ca_cert``).

    Args:
        address: ``host:port``.
        ca_cert: CA to verify the server with; ``None`` probes plain HTTP (insecure mode).
        timeout_s: Socket timeout.
    """
    if ca_cert is None:
        url, ctx = f"http://{address}/health", None
    else:
        url, ctx = f"https://{address}/health", ssl.create_default_context(cafile=str(ca_cert))
    try:
        with urllib.request.urlopen(url, timeout=timeout_s, context=ctx) as resp:
            return bool(resp.status == 200)
    except (urllib.error.URLError, OSError, ssl.SSLError):
        return False


@dataclass
class SuperLinkProcess:
    """A SuperLink started by this process; stop it with :meth:`stop` or a ``with`` block.

    Attributes:
        address: ``host:port`` clients connect to.
        ca_cert: The CA certificate the clients trust (``None`` when insecure).
        process: The process group (argv, log path).
    """

    address: str
    ca_cert: Path | None
    process: ManagedProcess

    @property
    def argv(self) -> list[str]:
        """The command line used."""
        return self.process.argv

    @property
    def log_path(self) -> Path:
        """The SuperLink's log file."""
        return self.process.log_path

    def alive(self) -> bool:
        """Return whether the process is still running."""
        return self.process.alive()

    def stop(self) -> int | None:
        """Stop the SuperLink and everything it started (its process group)."""
        return self.process.stop()

    def __enter__(self) -> SuperLinkProcess:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()


def start_superlink(
    state_dir: Path,
    *,
    host: str,
    port: int,
    ca_cert: Path | None,
    server_cert: Path | None,
    server_key: Path | None,
    node_auth: bool = True,
    insecure: bool = False,
    executable: str | None = None,
    extra_env: Mapping[str, str] | None = None,
    health_timeout_s: float = HEALTH_TIMEOUT_S,
) -> SuperLinkProcess:
    """Start a local SuperLink (its own process group) and wait until ``/health`` answers.

    Args:
        state_dir: Directory for ``superlink.db``, ``superlink.log`` and its ``FLWR_HOME``.
        host: Loopback address to bind (each emulated host has its own).
        port: Port to bind (pick a free one: other users share the machine).
        ca_cert: Deployment CA certificate.
        server_cert: Server certificate (SAN must include ``host``).
        server_key: Server key.
        node_auth: Enable SuperNode authentication.
        insecure: Development only (logged).
        executable: ``flower-superlink`` path; default: the one next to this Python.
        extra_env: Extra environment variables.
        health_timeout_s: How long to wait for ``/health``.

    Returns:
        The running SuperLink.

    Raises:
        TrainingError: It exited or did not become healthy in time (with its log tail).
    """
    if insecure:
        log.warning("starting the SuperLink INSECURE (development flag): no TLS, no node auth")
    exe = executable or default_executable("flower-superlink")
    state_dir.mkdir(parents=True, exist_ok=True)
    argv = superlink_argv(database=state_dir / "superlink.db", ca_cert=ca_cert,
                          server_cert=server_cert, server_key=server_key, host=host, port=port,
                          node_auth=node_auth and not insecure, insecure=insecure, executable=exe)
    log_path = state_dir / "superlink.log"
    env = venv_bin_env(exe, {"FLWR_HOME": str(state_dir / "flwr-home"), **(extra_env or {})})
    process = spawn(argv, env, log_path, cwd=state_dir)
    link = SuperLinkProcess(address=f"{host}:{port}", ca_cert=None if insecure else ca_cert,
                            process=process)
    deadline = time.monotonic() + health_timeout_s
    while time.monotonic() < deadline:
        if not link.alive():
            link.stop()
            raise TrainingError(
                f"the SuperLink exited with code {process.proc.returncode} at start "
                f"({shlex.join(argv)}). Log tail:\n{process.log_tail()}",
                f"read {log_path}; a busy port means another process holds {host}:{port}.",
            )
        if health_ok(link.address, link.ca_cert):
            return link
        time.sleep(HEALTH_POLL_S)
    link.stop()
    raise TrainingError(
        f"the SuperLink at {link.address} did not answer /health within {health_timeout_s:.0f} s."
        f" Log tail:\n{process.log_tail()}",
        f"read {log_path}; check that the server certificate's SAN includes {host}.",
    )


def free_port(host: str) -> int:
    """Return a port that is free on ``host`` right now (bind port 0)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])



class SupervisedSuperLink:
    """A local SuperLink kept running the way the aggregator's systemd unit keeps it.

    When the process dies it is reaped (its ``flower-superexec`` and ServerApp, which watch
    their parent's pid, exit within 0.2 s, as systemd's control-group kill ends them on the
    VM) and started again after :data:`RESTART_S` with the same command line: same address,
    same ``--database``, so nodes keep their ids and reconnect.

    Args:
        start: Starts the SuperLink and waits for ``/health`` (``start_superlink`` bound to its
            arguments); called once now and again after every death.
        on_restart: Called with each new SuperLink (to record its pid).
    """

    def __init__(self, start: Callable[[], SuperLinkProcess],
                 on_restart: Callable[[SuperLinkProcess], None] | None = None) -> None:
        self._start = start
        self._on_restart = on_restart
        self.link = start()
        self.restarts = 0
        self._stopping = threading.Event()
        self._thread = threading.Thread(target=self._watch, name="superlink-unit", daemon=True)
        self._thread.start()

    @property
    def address(self) -> str:
        """``host:port`` (the same across restarts)."""
        return self.link.address

    @property
    def process(self) -> ManagedProcess:
        """The current SuperLink process."""
        return self.link.process

    @property
    def argv(self) -> list[str]:
        """The command line (the same across restarts)."""
        return self.link.argv

    def alive(self) -> bool:
        """Return whether the current SuperLink process runs."""
        return self.link.alive()

    def _watch(self) -> None:
        while not self._stopping.wait(WATCH_POLL_S):
            if self.link.alive():
                continue
            code = self.link.stop()
            log.warning("the SuperLink at %s died (exit %s); restarting it in %.0f s",
                        self.address, code, RESTART_S)
            if self._stopping.wait(RESTART_S):
                return
            try:
                new = self._start()
            except TrainingError as exc:  # e.g. its port still held: try again later
                log.warning("restarting the SuperLink failed: %s", exc)
                continue
            if self._stopping.is_set():  # released while it started: not ours to keep
                new.stop()
                return
            self.link = new
            self.restarts += 1
            if self._on_restart is not None:
                self._on_restart(self.link)

    def release(self) -> None:
        """Stop watching; the SuperLink keeps running (stopped later by its owner).

        Returns at once even while a restart is under way: that SuperLink is then stopped by
        the watcher as soon as it is up, never left behind.
        """
        self._stopping.set()
        if self._thread is not threading.current_thread():
            self._thread.join(2 * WATCH_POLL_S)

    def stop(self) -> int | None:
        """Stop watching, then stop the SuperLink."""
        self.release()
        return self.link.stop()

    def __enter__(self) -> SupervisedSuperLink:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()
