"""SSH to the participants' private VMs: pinned host keys, quoted commands, 0600 secrets.

The orchestrator uses only the :class:`Transport` / :class:`Session` protocol defined here, so
:class:`ParamikoTransport` (real SSH) and a scripted test double are interchangeable.
See fl/README.md, "SSH: pinned host keys, quoted commands, 0600 secrets".
"""

from __future__ import annotations

import logging
import shlex
import time
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import PurePosixPath
from types import TracebackType
from typing import Literal, Protocol

import paramiko

from fedcloud.core.errors import OrchestratorError
from fedcloud.core.participants import VmSpec

log = logging.getLogger(__name__)

CONNECT_TIMEOUT_S = 5.0
"""TCP connect timeout: an unreachable VM costs at most this long."""
BANNER_TIMEOUT_S = 5.0
"""Wait for the server's SSH banner after the TCP connect."""
AUTH_TIMEOUT_S = 5.0
"""Wait for the server's answer to public-key authentication."""
CHANNEL_TIMEOUT_S = 5.0
"""Wait for a new session/SFTP channel to open."""
COMMAND_TIMEOUT_S = 30.0
"""Default bound on one remote command, from exec to exit status."""
_POLL_S = 0.2
"""Longest pause between two reads of a running command's output."""

HostKeyPolicy = Literal["reject", "tofu"]
HOST_KEY_POLICIES: tuple[HostKeyPolicy, ...] = ("reject", "tofu")

FailureKind = Literal["connect", "hostkey", "auth", "timeout", "sftp", "command", "config"]


class SshError(OrchestratorError):
    """An SSH step failed; ``kind`` says which (connect, hostkey, auth, timeout, sftp, ...).

    Args:
        kind: The failing step, used in per-VM results and retry decisions.
        message: What failed and why.
        fix: The exact action that fixes it.
    """

    def __init__(self, kind: FailureKind, message: str, fix: str | None = None) -> None:
        self.kind: FailureKind = kind
        super().__init__(message, fix)


class HostKeyRejected(paramiko.SSHException):
    """Raised by :class:`PinnedHostKeyPolicy` when the server's key does not match the pin."""


@dataclass(frozen=True)
class CommandResult:
    """Outcome of one remote command."""

    exit_code: int
    stdout: str
    stderr: str

    @property
    def ok(self) -> bool:
        """Whether the command exited with status 0."""
        return self.exit_code == 0

    def tail(self, lines: int = 3) -> str:
        """Return the last ``lines`` lines of stderr (or stdout) for one-line error messages."""
        text = (self.stderr.strip() or self.stdout.strip()).splitlines()
        return " | ".join(text[-lines:])


class Session(Protocol):
    """An open connection to one VM."""

    def run(self, command: str, timeout_s: float = COMMAND_TIMEOUT_S) -> CommandResult:
        """Run a shell command (already quoted) and wait for its exit status."""
        ...

    def put(self, data: bytes, remote_path: str, mode: int) -> None:
        """Write ``data`` to ``remote_path`` with permission bits ``mode`` (atomic rename)."""
        ...

    def close(self) -> None:
        """Close the connection (idempotent)."""
        ...

    def __enter__(self) -> Session: ...

    def __exit__(self, et: type[BaseException] | None, ev: BaseException | None,
                 tb: TracebackType | None) -> None: ...


class Transport(Protocol):
    """Opens sessions to VMs; raises :class:`SshError` when it cannot."""

    def connect(self, vm: VmSpec) -> Session:
        """Connect and authenticate to ``vm``."""
        ...


def fingerprint(key: paramiko.PKey) -> str:
    """Return OpenSSH's ``SHA256:<base64 without padding>`` fingerprint of a public key."""
    return key.fingerprint


def remote_command(argv: Sequence[str], env: Mapping[str, str] | None = None,
                   cwd: str | None = None) -> str:
    """Build a POSIX shell command line from an argv list, every word quoted.

    Args:
        argv: Program and arguments.
        env: Variables set for the program only (``env K=V ... argv``).
        cwd: Directory to change to first.

    Returns:
        The command line, safe to pass to a remote shell.
    """
    words = list(argv)
    if env:
        words = ["env", *(f"{k}={v}" for k, v in env.items()), *words]
    line = shlex.join(words)
    if cwd:
        line = f"cd {shlex.quote(cwd)} && {line}"
    return line


class PinnedHostKeyPolicy(paramiko.MissingHostKeyPolicy):
    """Accept a server key only if its SHA256 fingerprint equals the inventory's pin.

    Args:
        vm: The VM being connected to (its ``host_key_fingerprint`` is the pin).
        policy: ``reject`` (default) refuses a VM without a pin; ``tofu`` accepts the first key
            seen at that address (logged) and pins it in ``learned`` for later connections.
        learned: ``host:port`` to fingerprint accepted on first use (shared per transport).
    """

    def __init__(self, vm: VmSpec, policy: HostKeyPolicy = "reject",
                 learned: dict[str, str] | None = None) -> None:
        self.vm = vm
        self.policy = policy
        self.learned = learned if learned is not None else {}
        self.seen: str | None = None

    def missing_host_key(self, client: paramiko.SSHClient, hostname: str,
                         key: paramiko.PKey) -> None:
        """Check ``key`` against the pin (called by paramiko for every connection)."""
        seen = fingerprint(key)
        self.seen = seen
        pinned = self.vm.host_key_fingerprint
        if pinned is not None:
            if seen != pinned:
                raise HostKeyRejected(
                    f"host key of {self.vm.id} ({hostname}) is {seen}, but the inventory pins "
                    f"{pinned}")
            return
        if self.policy == "tofu":
            address = f"{self.vm.host}:{self.vm.port}"
            known = self.learned.get(address)
            if known is None:
                self.learned[address] = seen
                log.warning("trust-on-first-use: accepting %s key %s for VM %s (%s); pin it as "
                            "hostKeyFingerprint", key.get_name(), seen, self.vm.id, hostname)
            elif known != seen:
                raise HostKeyRejected(f"host key of {self.vm.id} ({hostname}) changed from "
                                      f"{known}, accepted on first use, to {seen}")
            return
        raise HostKeyRejected(f"VM {self.vm.id} ({hostname}) has no pinned host key "
                              f"(server offers {seen})")


class ParamikoSession:
    """A :class:`Session` over a connected :class:`paramiko.SSHClient`."""

    def __init__(self, vm: VmSpec, client: paramiko.SSHClient) -> None:
        self.vm = vm
        self._client = client
        self._sftp: paramiko.SFTPClient | None = None

    def __enter__(self) -> ParamikoSession:
        return self

    def __exit__(self, et: type[BaseException] | None, ev: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()

    def _transport(self) -> paramiko.Transport:
        transport = self._client.get_transport()
        if transport is None or not transport.is_active():
            raise SshError("connect", f"VM {self.vm.id}: the SSH connection was closed.",
                           "check that sshd on the VM is running and retry.")
        return transport

    def run(self, command: str, timeout_s: float = COMMAND_TIMEOUT_S) -> CommandResult:
        """Run ``command`` in the VM's login shell; bounded by ``timeout_s`` from start to exit."""
        try:
            channel = self._transport().open_session(timeout=CHANNEL_TIMEOUT_S)
        except (paramiko.SSHException, OSError) as exc:
            raise SshError("connect", f"VM {self.vm.id}: cannot open a session ({exc}).",
                           "check the VM's sshd (MaxSessions) and retry.") from None
        deadline = time.monotonic() + timeout_s
        out: list[bytes] = []
        err: list[bytes] = []
        try:
            channel.settimeout(CHANNEL_TIMEOUT_S)
            channel.exec_command(command)
            channel.shutdown_write()
            while True:
                busy = False
                if channel.recv_ready():
                    out.append(channel.recv(65536))
                    busy = True
                if channel.recv_stderr_ready():
                    err.append(channel.recv_stderr(65536))
                    busy = True
                if (channel.exit_status_ready() and not channel.recv_ready()
                        and not channel.recv_stderr_ready()):
                    break
                if time.monotonic() > deadline:
                    raise SshError("timeout", f"VM {self.vm.id}: command did not finish within "
                                   f"{timeout_s:g} s: {command[:80]}",
                                   "check the VM's load, or raise the timeout.")
                if not busy:
                    # Wakes at once on the exit status; output meanwhile waits in the channel's
                    # window (drained on the next pass, at most _POLL_S later).
                    channel.status_event.wait(_POLL_S)
            code = channel.recv_exit_status()
        except (paramiko.SSHException, OSError) as exc:
            raise SshError("connect", f"VM {self.vm.id}: connection lost while running a "
                           f"command ({exc}).", "check the VM and retry.") from None
        finally:
            channel.close()
        return CommandResult(code, b"".join(out).decode(errors="replace"),
                             b"".join(err).decode(errors="replace"))

    def put(self, data: bytes, remote_path: str, mode: int) -> None:
        """Upload ``data``: temp file, chmod before the first byte, then rename into place."""
        path = PurePosixPath(remote_path)
        tmp = str(path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}.tmp"))
        try:
            if self._sftp is None:
                self._sftp = self._client.open_sftp()
                channel = self._sftp.get_channel()
                if channel is not None:
                    channel.settimeout(COMMAND_TIMEOUT_S)
            with self._sftp.open(tmp, "wb") as handle:
                handle.chmod(mode)
                handle.write(data)
            self._sftp.posix_rename(tmp, remote_path)
        except (OSError, paramiko.SSHException) as exc:
            raise SshError("sftp", f"VM {self.vm.id}: cannot write {remote_path} ({exc}).",
                           "check that the VM's workDir exists, is writable by the SSH user "
                           "and has free space.") from None

    def close(self) -> None:
        """Close the SFTP channel and the connection."""
        if self._sftp is not None:
            self._sftp.close()
            self._sftp = None
        self._client.close()


class ParamikoTransport:
    """Real SSH with paramiko: key authentication only, host key pinned.

    Args:
        host_key_policy: ``reject`` (default) or ``tofu`` (explicit, logged).
        connect_timeout_s: TCP connect bound.
    """

    def __init__(self, host_key_policy: HostKeyPolicy = "reject",
                 connect_timeout_s: float = CONNECT_TIMEOUT_S) -> None:
        if host_key_policy not in HOST_KEY_POLICIES:
            raise SshError("config", f"unknown host key policy '{host_key_policy}'.",
                           "set fedcloud:orchestrator.hostKeyPolicy to reject or tofu.")
        self.host_key_policy: HostKeyPolicy = host_key_policy
        self.connect_timeout_s = connect_timeout_s
        self.learned: dict[str, str] = {}
        if host_key_policy == "tofu":
            log.warning("host key policy is trust-on-first-use: VMs without a pinned "
                        "fingerprint are accepted on first contact")

    def connect(self, vm: VmSpec) -> ParamikoSession:
        """Connect to ``vm`` and authenticate with its private key.

        Raises:
            SshError: kind ``config`` (no key), ``connect``, ``hostkey`` or ``auth``.
        """
        if vm.key_path is None:
            raise SshError("config", f"VM {vm.id} has no keyPath.",
                           "set keyPath (the SSH private key) for this VM in the stack.")
        try:
            pkey = paramiko.PKey.from_path(vm.key_path)
        except FileNotFoundError:
            raise SshError("config", f"VM {vm.id}: key file {vm.key_path} not found.",
                           "fix keyPath for this VM in the stack.") from None
        except (paramiko.SSHException, ValueError) as exc:
            raise SshError("config", f"VM {vm.id}: cannot read key {vm.key_path} ({exc}).",
                           "use an unencrypted OpenSSH private key (ssh-keygen -t ed25519 "
                           "-N '').") from None
        client = paramiko.SSHClient()
        policy = PinnedHostKeyPolicy(vm, self.host_key_policy, self.learned)
        client.set_missing_host_key_policy(policy)
        try:
            client.connect(
                vm.host, port=vm.port, username=vm.user, pkey=pkey,
                timeout=self.connect_timeout_s, banner_timeout=BANNER_TIMEOUT_S,
                auth_timeout=AUTH_TIMEOUT_S, channel_timeout=CHANNEL_TIMEOUT_S,
                allow_agent=False, look_for_keys=False,
            )
        except HostKeyRejected as exc:
            client.close()
            raise SshError("hostkey", f"refusing VM {vm.id}: {exc}.",
                           "if the VM was really re-installed, verify its key out of band "
                           "(ssh-keygen -lf on the VM) and update hostKeyFingerprint.") from None
        except paramiko.AuthenticationException as exc:
            client.close()
            raise SshError("auth", f"VM {vm.id}: authentication as {vm.user} failed ({exc}).",
                           f"add the public key of {vm.key_path} to the VM user's "
                           "authorized_keys.") from None
        except TimeoutError:
            client.close()
            raise SshError("connect", f"VM {vm.id} ({vm.host}:{vm.port}) did not answer within "
                           f"{self.connect_timeout_s:g} s.",
                           "check that the VM is running and reachable.") from None
        except (paramiko.SSHException, OSError, EOFError) as exc:
            client.close()
            reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
            raise SshError("connect", f"VM {vm.id} ({vm.host}:{vm.port}) unreachable: {reason}.",
                           "check that the VM is running and its sshd listens there.") from None
        return ParamikoSession(vm, client)
