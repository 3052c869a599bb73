"""The Flower SuperNode command line: what the orchestrator runs on a participant's VM over SSH.

:func:`supernode_argv` and :func:`supernode_env` are pure; :func:`supernode_shell_command` joins
them into one ``sh`` line for SSH. :func:`start_supernode` runs the same thing locally (tests, the
local stack), each node with its own ``FLWR_HOME`` and runtime port.

A SuperNode always gets ``--max-wait-time``: without it, a node that cannot reach the SuperLink
(wrong CA, ``--insecure`` against TLS, SuperLink down) retries silently forever. The data path
travels as node config (``data-dir``), read by the ClientApp as ``context.node_config``: the data
never moves.
"""

from __future__ import annotations

import logging
import shlex
from collections.abc import Mapping
from pathlib import Path

from fedcloud.core.errors import TrainingError
from fedcloud.core.flower import FLOWER_QUIET_ENV, default_executable, venv_bin_env
from fedcloud.core.procs import ManagedProcess, spawn
from fedcloud.core.training import config_args
from fl.app.runconfig import NODE_DATA_DIR, NODE_PARTICIPANT, NODE_TORCH_THREADS
from fl.orchestrator.warmstart import launch_lines, write_local

log = logging.getLogger(__name__)

# How long a SuperNode keeps trying to reach the SuperLink before it exits (seconds).
MAX_WAIT_TIME_S = 120.0
RUNTIME_PORT = 9094
SUPEREXEC_TASK_POLL_ENV = "FLWR_SUPEREXEC_TASK_POLL_INTERVAL"
SUPEREXEC_TASK_POLL_S = 0.05
"""How often the SuperNode's SuperExec looks for a new task (Flower's default 1.0 s; 0.01-60),
read from the SuperNode's environment: every SuperNode the project starts gets it."""


def supernode_argv(
    *,
    superlink: str,
    data_dir: str,
    participant: str,
    ca_cert: str | None,
    private_key: str | None,
    max_wait_time_s: float = MAX_WAIT_TIME_S,
    runtime_host: str = "127.0.0.1",
    runtime_port: int = RUNTIME_PORT,
    insecure: bool = False,
    executable: str = "flower-supernode",
    torch_threads: int = 0,
    extra_node_config: Mapping[str, str | int | float | bool] | None = None,
) -> list[str]:
    """Return the ``flower-supernode`` command line (a pure function).

    Args:
        superlink: The SuperLink's ``host:port`` (its public address; must match a SAN).
        data_dir: The participant's local data directory on that host.
        participant: Participant name (reported with its metrics).
        ca_cert: Path of the deployment CA certificate on that host.
        private_key: Path of the node's ECDSA P-384 OpenSSH private key on that host (its public
            key must be registered on the SuperLink first).
        max_wait_time_s: Give up reaching the SuperLink after this long (the node then exits
            non-zero and the orchestrator retries elsewhere).
        runtime_host: Address of the node's local runtime API (the ClientApp process connects).
        runtime_port: Its port; distinct per SuperNode on one host.
        insecure: Development only: no TLS, no node key.
        executable: ``flower-supernode`` path on that host.
        torch_threads: Threads each ClientApp's torch may use (0 = torch's default, all
            cores); set it when several SuperNodes share a host.
        extra_node_config: More node config entries.

    Returns:
        The argument vector.

    Raises:
        TrainingError: TLS material is missing while ``insecure`` is false.
    """
    values: dict[str, str | int | float | bool] = {NODE_DATA_DIR: data_dir,
                                                   NODE_PARTICIPANT: participant}
    if torch_threads:
        values[NODE_TORCH_THREADS] = torch_threads
    node_config = config_args({**values, **(extra_node_config or {})})
    argv = [executable, "--superlink", superlink, "--node-config", node_config,
            "--max-wait-time", f"{max_wait_time_s:g}", "--host", runtime_host,
            "--port", str(runtime_port)]
    if insecure:
        argv.append("--insecure")
        return argv
    if not ca_cert or not private_key:
        raise TrainingError(
            f"SuperNode '{participant}' needs the deployment CA certificate and its node key.",
            "copy ca.pem and the participant's node key (fl.initializer.certs) to the VM and "
            "pass their paths.",
        )
    argv += ["--root-certificates", ca_cert, "--auth-supernode-private-key", private_key]
    return argv


def supernode_env(flwr_home: str, venv_bin: str | None = None) -> dict[str, str]:
    """Return the environment variables a SuperNode must be started with (not the whole env).

    Args:
        flwr_home: The node's own Flower home (FAB cache, state); distinct per node on one host.
        venv_bin: The venv's ``bin`` directory on that host, put first on PATH (the SuperNode
            launches ``flwr-clientapp`` by name).
    """
    env = dict(FLOWER_QUIET_ENV)
    env[SUPEREXEC_TASK_POLL_ENV] = f"{SUPEREXEC_TASK_POLL_S:g}"
    env["FLWR_HOME"] = flwr_home
    if venv_bin:
        env["PATH"] = f"{venv_bin}:$PATH"
    return env


def supernode_shell_command(argv: list[str], env: Mapping[str, str],
                            before: str = "") -> str:
    """Return POSIX ``sh`` that sets ``env`` and execs ``argv`` (for SSH), after ``before``.

    ``PATH`` may reference ``$PATH``; it is expanded by the remote shell, every other value is
    quoted literally. ``before`` (e.g. :func:`fl.orchestrator.warmstart.launch_lines`) runs
    first in the same shell, with ``env`` already exported.
    """
    parts = []
    for key, value in env.items():
        if key == "PATH" and value.endswith(":$PATH"):
            parts.append(f'PATH={shlex.quote(value[: -len(":$PATH")])}:"$PATH"')
        else:
            parts.append(f"{key}={shlex.quote(value)}")
    if before:
        return f"export {' '.join(parts)}\n{before}\nexec {shlex.join(argv)}"
    return " ".join(["exec", "env", *parts, shlex.join(argv)])


def start_supernode(
    work_dir: Path,
    *,
    superlink: str,
    data_dir: Path,
    participant: str,
    ca_cert: Path | None,
    private_key: Path | None,
    runtime_host: str,
    runtime_port: int,
    max_wait_time_s: float = MAX_WAIT_TIME_S,
    insecure: bool = False,
    executable: str | None = None,
    torch_threads: int = 0,
    warm: bool = True,
) -> ManagedProcess:
    """Start a SuperNode locally (its own process group, FLWR_HOME and log).

    Args:
        work_dir: The node's directory (``flwr-home/`` and ``supernode.log`` go there).
        superlink: SuperLink ``host:port``.
        data_dir: The participant's data directory.
        participant: Participant name.
        ca_cert: Deployment CA certificate.
        private_key: The node's OpenSSH private key.
        runtime_host: Loopback address of this emulated host.
        runtime_port: A free port on it.
        max_wait_time_s: See :func:`supernode_argv`.
        insecure: Development only (logged).
        executable: ``flower-supernode`` path; default: next to this Python.
        torch_threads: See :func:`supernode_argv`.
        warm: Start its ClientApps warm (``fl.orchestrator.warmstart``), as on a VM.

    Returns:
        The running process (check it comes online with
        ``fl.initializer.flwr_cli.FlwrCli.wait_online``).
    """
    if insecure:
        log.warning("starting SuperNode %s INSECURE (development flag)", participant)
    exe = executable or default_executable("flower-supernode")
    argv = supernode_argv(
        superlink=superlink, data_dir=str(data_dir), participant=participant,
        ca_cert=str(ca_cert) if ca_cert else None,
        private_key=str(private_key) if private_key else None,
        max_wait_time_s=max_wait_time_s, runtime_host=runtime_host, runtime_port=runtime_port,
        insecure=insecure, executable=exe, torch_threads=torch_threads,
    )
    work_dir.mkdir(parents=True, exist_ok=True)
    env = venv_bin_env(exe, supernode_env(str(work_dir / "flwr-home")))
    if warm:
        python = str(Path(exe).with_name("python"))
        write_local(work_dir, python)
        lines = launch_lines(str(work_dir), python)
        argv = ["sh", "-c", f"{lines}\nexec \"$@\"", "sh", *argv]
    return spawn(argv, env, work_dir / "supernode.log", cwd=work_dir)
