"""Warm ClientApp starts on a participant's host: the starter, the shim, the launch lines.

Each message a SuperNode handles starts a ``flwr-clientapp`` process that imports torch and
Flower again (about 5 CPU-seconds). The starter (``warm/zygote.py``) imports them once per
SuperNode and forks each ClientApp from there; the shim (``warm/shim.py``), first on the
SuperNode's PATH as ``flwr-clientapp``, hands it the start and, when the starter does not
answer, runs Flower's own. What it relies on in Flower 1.41: fl/README.md, "Warm ClientApp
starts".
"""

from __future__ import annotations

import shlex
from pathlib import Path

WARM_DIR = Path(__file__).resolve().parent / "warm"
SOCKET_ENV = "FEDCLOUD_WARM_SOCKET"
REAL_ENV = "FEDCLOUD_REAL_CLIENTAPP"
SHIM_FILE = "flwr-clientapp"  # the name Flower's SuperExec launches (supercore/constant.py)
STARTER_FILE = "warm-starter.py"
SOCKET_FILE = "warm.sock"
# Unix socket paths hold at most 107 bytes (sun_path): a longer one goes to a fresh 0700
# directory under /tmp.
MAX_SOCKET_PATH = 100


def starter_text() -> str:
    """The starter's source (stdlib, torch and flwr only), as shipped to the host."""
    return (WARM_DIR / "zygote.py").read_text(encoding="utf-8")


def shim_text(python: str) -> str:
    """The ``flwr-clientapp`` shim run by ``python`` (a path: with ``-S``, no site import)."""
    line = f"#!{python} -S" if python.startswith("/") else f"#!/usr/bin/env {python}"
    return line + "\n" + (WARM_DIR / "shim.py").read_text(encoding="utf-8")


def launch_lines(directory: str, python: str) -> str:
    """``sh`` lines that start the starter in the background before the SuperNode's ``exec``.

    ``directory`` holds :data:`STARTER_FILE` and :data:`SHIM_FILE` and goes first on PATH;
    Flower's own ``flwr-clientapp`` (the shim's fallback) is resolved on the PATH before that.
    The starter's parent is the shell that then becomes the SuperNode, so it exits with it, and
    it shares the SuperNode's process group, so stopping the group stops it and its ClientApps.
    """
    d = shlex.quote(directory)
    return "\n".join([
        f"sock={d}/{SOCKET_FILE}",
        f'[ "${{#sock}}" -le {MAX_SOCKET_PATH} ] || sock="$(mktemp -d /tmp/fcw.XXXXXX)/s"',
        f'{REAL_ENV}="$(command -v {SHIM_FILE})"',
        f'export {SOCKET_ENV}="$sock" {REAL_ENV} PATH={d}:"$PATH"',
        f'{shlex.quote(python)} {d}/{STARTER_FILE} "$sock" &',
    ])


def write_local(directory: Path, python: str) -> None:
    """Write the starter and the shim into ``directory`` (a local SuperNode's)."""
    directory.mkdir(parents=True, exist_ok=True)
    (directory / STARTER_FILE).write_text(starter_text(), encoding="utf-8")
    shim = directory / SHIM_FILE
    shim.write_text(shim_text(python), encoding="utf-8")
    shim.chmod(0o700)
