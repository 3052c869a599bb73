"""What every Flower process the project starts shares: environment, port, SuperLink command line.

Flower phones home unless told not to; every Flower process is started with ``flower_env()``.
The SuperLink's command line is the same for the cloud bootstrap and the local stack.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Mapping
from pathlib import Path

from fedcloud.core.errors import TrainingError

# The SuperLink's Fleet API port on the aggregator (the firewall opens the same one).
SUPERLINK_PORT = 8000

FLOWER_QUIET_ENV: dict[str, str] = {
    "FLWR_TELEMETRY_ENABLED": "0",
    "FLWR_DISABLE_UPDATE_CHECK": "1",
}


def flower_env(extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """Return a copy of ``os.environ`` with Flower's phone-home switched off.

    Args:
        extra: Additional variables (for example ``FLWR_HOME``) layered on top.

    Returns:
        The environment mapping to pass to ``subprocess``.
    """
    env = dict(os.environ)
    env.update(FLOWER_QUIET_ENV)
    if extra:
        env.update(extra)
    return env


def quiet_flower_here() -> None:
    """Set the Flower variables in this process (for code that imports ``flwr`` in-process)."""
    os.environ.update(FLOWER_QUIET_ENV)


def venv_bin_env(executable: str, extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """Return ``flower_env()`` with the executable's directory first on PATH.

    The SuperLink launches ``flower-superexec`` and the SuperNode ``flwr-clientapp`` by name,
    so the venv holding them must be on PATH.
    """
    env = flower_env(extra)
    exe_dir = os.path.dirname(executable)
    if exe_dir:
        env["PATH"] = exe_dir + os.pathsep + env.get("PATH", "")
    return env


def default_executable(name: str) -> str:
    """Return the path of a Flower console script installed next to this Python interpreter."""
    candidate = Path(sys.executable).parent / name
    return str(candidate) if candidate.exists() else name


def superlink_argv(
    *,
    database: str | Path,
    ca_cert: str | Path | None,
    server_cert: str | Path | None,
    server_key: str | Path | None,
    host: str = "0.0.0.0",
    port: int = SUPERLINK_PORT,
    node_auth: bool = True,
    insecure: bool = False,
    executable: str = "flower-superlink",
    log_file: str | Path | None = None,
) -> list[str]:
    """Return the ``flower-superlink`` command line (a pure function).

    The cloud bootstrap runs exactly this list (with ``host="0.0.0.0"``); the local process uses
    the aggregator's loopback address.

    Args:
        database: SQLite state file (``--database``): nodes keep their ids across restarts.
        ca_cert: The deployment CA certificate (PEM).
        server_cert: The SuperLink's server certificate (PEM), SAN incl. 127.0.0.1.
        server_key: Its private key (PEM).
        host: Address to bind.
        port: The single SuperLink port.
        node_auth: Accept only registered SuperNode keys (requires TLS).
        insecure: Development only: plain HTTP, no node authentication.
        executable: The ``flower-superlink`` program (absolute path of a venv's script, or a name
            on PATH).
        log_file: Optional log file (Flower rotates it).

    Returns:
        The argument vector.

    Raises:
        TrainingError: TLS material is missing while ``insecure`` is false, or node
            authentication is asked for without TLS.
    """
    argv = [executable, "--host", host, "--port", str(port), "--database", str(database),
            "--disable-runtime-dependency-installation"]
    if insecure:
        if node_auth:
            raise TrainingError(
                "SuperNode authentication needs TLS, but the SuperLink was asked to run insecure.",
                "drop the insecure development flag, or turn node authentication off with it.",
            )
        argv.append("--insecure")
    else:
        if not (ca_cert and server_cert and server_key):
            raise TrainingError(
                "the SuperLink needs the CA certificate, its server certificate and key for TLS.",
                "generate them with fl.initializer.certs.ensure_deployment_certs(...) and "
                "pass their paths.",
            )
        argv += ["--ssl-ca-certfile", str(ca_cert), "--ssl-certfile", str(server_cert),
                 "--ssl-keyfile", str(server_key)]
        if node_auth:
            argv.append("--enable-supernode-auth")
    if log_file is not None:
        argv += ["--log-file", str(log_file)]
    return argv
