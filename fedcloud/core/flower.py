"""Process environment shared by every process the project starts.

Flower posts telemetry and an update check to the internet unless told not to; hospitals and
banks expect neither, and the machines this runs on may have no route out. Every Flower process
(CLI, SuperLink, SuperNode, ServerApp/ClientApp) is started with ``flower_env()``.
"""

from __future__ import annotations

import os
from collections.abc import Mapping

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
