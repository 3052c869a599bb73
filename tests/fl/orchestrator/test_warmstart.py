"""Warm ClientApp starts: the shim hands the start to the starter, which forks the ClientApp.

The starter is the real ``warm/zygote.py`` process with its real socket; its entry point is
the one thing swapped (a child that prints what it was given), so every step a ClientApp start
takes is exercised without a SuperNode.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

from fl.orchestrator.warm.zygote import PRELOAD_NICE
from fl.orchestrator.warmstart import (
    REAL_ENV,
    SHIM_FILE,
    SOCKET_ENV,
    STARTER_FILE,
    launch_lines,
    write_local,
)

# The starter's module with its entry point swapped for one that reports what it was handed.
STARTER_WITH_PROBE = """
import os, sys
sys.path.insert(0, {warm!r})
import zygote
def probe():
    print("child", os.getpid(), os.getppid(), os.getcwd(), os.environ.get("PROBE"),
          " ".join(sys.argv), "nice", os.getpriority(os.PRIO_PROCESS, 0), flush=True)
def preload():
    print("preload nice", os.getpriority(os.PRIO_PROCESS, 0), flush=True)
    return probe
zygote.preload = preload
zygote.serve(sys.argv[1], os.getppid())
"""


def _wait_for(path: Path, text: str, timeout_s: float = 60) -> str:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if path.exists() and text in (out := path.read_text()):
            return out
        time.sleep(0.05)
    raise AssertionError(f"{text!r} not in {path}: {path.read_text() if path.exists() else ''}")


def test_the_shim_starts_the_clientapp_through_the_starter(tmp_path: Path) -> None:
    from fl.orchestrator import warmstart

    write_local(tmp_path, sys.executable)
    starter = tmp_path / "probe_starter.py"
    starter.write_text(STARTER_WITH_PROBE.format(warm=str(warmstart.WARM_DIR)))
    sock = str(tmp_path / "w.sock")
    log = tmp_path / "starter.log"
    # The starter exits with its parent: a shell that waits for a stop file stands in for it.
    parent = subprocess.Popen(
        ["sh", "-c", f'{sys.executable} {starter} {sock} >>{log} 2>&1 & '
         f'while [ ! -e {tmp_path}/stop ]; do sleep 0.1; done'])
    try:
        _wait_for(log, "ready")
        out = tmp_path / "clientapp.out"
        env = {"PATH": os.environ["PATH"], SOCKET_ENV: sock, "PROBE": "seen"}
        work = tmp_path / "cwd"
        work.mkdir()
        with out.open("w") as fh:
            shim = subprocess.run([str(tmp_path / SHIM_FILE), "--token", "t1"], env=env,
                                  cwd=work, stdout=fh, stderr=subprocess.STDOUT, timeout=30)
        assert shim.returncode == 0
        text = _wait_for(out, "child")
        fields = text.split()
        # Forked by the starter, in the shim's directory, environment and streams.
        assert fields[3:8] == [str(work), "seen", "flwr-clientapp", "--token", "t1"]
        # The imports ran niced in their own thread; the ClientApp runs at the starter's
        # priority (Linux: a nice value per thread, inherited from the forking thread).
        base = os.getpriority(os.PRIO_PROCESS, 0)
        assert fields[8:] == ["nice", str(base)]
        assert f"preload nice {min(19, base + PRELOAD_NICE)}" in log.read_text()
        starter_pid = int(fields[2])
        assert b"probe_starter.py" in Path(f"/proc/{starter_pid}/cmdline").read_bytes()
    finally:
        (tmp_path / "stop").touch()
        parent.wait(10)
    deadline = time.monotonic() + 10
    while os.path.exists(sock) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not os.path.exists(sock)


def test_without_a_starter_the_shim_runs_flowers_own(tmp_path: Path) -> None:
    write_local(tmp_path, sys.executable)
    real = tmp_path / "real-clientapp"
    real.write_text("#!/bin/sh\necho real \"$@\"\n")
    real.chmod(0o700)
    env = {"PATH": os.environ["PATH"], SOCKET_ENV: str(tmp_path / "none.sock"),
           REAL_ENV: str(real)}
    done = subprocess.run([str(tmp_path / SHIM_FILE), "--token", "t2"], env=env,
                          capture_output=True, text=True, timeout=30)
    assert done.stdout.strip() == "real --token t2"
    # Never itself: a fallback that is the shim again is refused with one line.
    env[REAL_ENV] = str(tmp_path / SHIM_FILE)
    again = subprocess.run([str(tmp_path / SHIM_FILE)], env=env, capture_output=True,
                           text=True, timeout=30)
    assert again.returncode != 0 and "warm starter does not answer" in again.stderr


def test_the_launch_lines_resolve_flowers_own_before_the_shim_goes_first(tmp_path: Path) -> None:
    bin_dir = tmp_path / "venv"
    bin_dir.mkdir()
    (bin_dir / SHIM_FILE).write_text("#!/bin/sh\n")
    (bin_dir / SHIM_FILE).chmod(0o700)
    lines = launch_lines(str(tmp_path / "node"), "/bin/true")
    script = f'{lines}\necho "$PATH|${REAL_ENV}|${SOCKET_ENV}"\n'
    out = subprocess.run(["sh", "-c", script], capture_output=True, text=True, check=True,
                         env={"PATH": f"{bin_dir}:/usr/bin:/bin"}).stdout.strip()
    path, real, sock = out.split("|")
    assert path.split(":")[0] == str(tmp_path / "node")
    assert real == str(bin_dir / SHIM_FILE)
    assert sock == str(tmp_path / "node" / "warm.sock")
    # A directory too deep for a Unix socket path gets one under /tmp.
    deep = "/".join(["d" * 40] * 3)
    out = subprocess.run(["sh", "-c", launch_lines(f"/tmp/{deep}", "/bin/true")
                          + f'\necho "${SOCKET_ENV}"'], capture_output=True, text=True,
                         check=True).stdout.strip()
    assert out.startswith("/tmp/fcw.") and len(out) <= 100
    os.rmdir(os.path.dirname(out))
    assert STARTER_FILE in lines
