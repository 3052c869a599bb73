"""Real faults on a real local stack: `up` killed by SIGKILL, two `up`s at once, SIGTERM.

One participant with one sshd VM, a TLS SuperLink, SuperNodes over SSH. After each fault,
`fedcloud down` must leave no process of the stack: none mentioning its state directory in its
command line or environment (the stack's marker included).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.slow

STACK = """config:
  fedcloud:stateDir: {state}
  fedcloud:aggregator: {{target: local}}
  fedcloud:limits: {{maxCost: 85000, maxLatencyMs: 250}}
  fedcloud:participants:
    - name: p1
      location: {{region: 'aws:us-east-1'}}
      egressCidr: 127.0.1.80/28
      vms:
        - {{id: vm-001, host: 127.0.1.81, state: Active, vcpus: 2, memoryGb: 8, diskGb: 40}}
  fedcloud:training: {{model: covid_cnn, width: 4, imageSize: 32, rounds: 3, minNodes: 1,
                      batchSize: 8, secureAggregation: false}}
  fedcloud:localData: {{trainPerParticipant: 16, testPerParticipant: 8}}
"""
GOOD = {"aggregator": {"cloud": "local"}, "plan": {}, "participants": {},
        "training": {"runId": "42", "status": "COMPLETED"}, "timings": {}}


def _stack(tmp: Path) -> tuple[Path, Path]:
    path = tmp / "Pulumi.crash.yaml"
    path.write_text(STACK.format(state=tmp / "state"))
    return path, tmp / "state"


def _fedcloud(*args: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "fedcloud.cli.main", *args],
                          capture_output=True, text=True, timeout=timeout, cwd=ROOT, check=False)


def _start_up(stack: Path) -> subprocess.Popen[str]:
    return subprocess.Popen([sys.executable, "-m", "fedcloud.cli.main", "up", "--config",
                             str(stack)], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, cwd=ROOT)


def _stack_processes(state: Path) -> dict[int, str]:
    """PIDs (with command lines) whose command line or environment names ``state``."""
    found = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes()
            blob = cmdline + (entry / "environ").read_bytes()
        except OSError:
            continue
        if str(state).encode() in blob:
            found[int(entry.name)] = cmdline.replace(b"\0", b" ").decode(errors="replace")
    return found


def _wait_for(what: str, check: Any, proc: subprocess.Popen[str], timeout: float) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        got = check()
        if got:
            return got
        assert proc.poll() is None, f"up ended before {what}: {proc.communicate()[1][-2000:]}"
        time.sleep(0.25)
    raise AssertionError(f"no {what} within {timeout:.0f} s")


def _superlink_pid(state: Path) -> int | None:
    try:
        link = json.loads((state / "local.json").read_text()).get("superlink") or {}
    except (OSError, ValueError):
        return None
    pid = link.get("pid")
    return pid if isinstance(pid, int) else None


def _supernodes(state: Path) -> list[int]:
    return [p for p, line in _stack_processes(state).items() if "flower-supernode" in line]


@pytest.mark.parametrize(("moment", "records"), [("superlink", "intact"),
                                                 ("supernode", "garbage")])
def test_sigkilled_up_leaves_nothing_after_down(tmp_path: Path, moment: str,
                                                records: str) -> None:
    stack, state = _stack(tmp_path)
    up = _start_up(stack)
    try:
        _wait_for("SuperLink", lambda: _superlink_pid(state), up, 120)
        if moment == "supernode":  # dispatched: a SuperNode started over SSH carries the marker
            _wait_for("SuperNode", lambda: _supernodes(state), up, 180)
    finally:  # at "superlink", up's own `flwr supernode register` child is usually running
        up.kill()
        up.communicate()
    assert len(_stack_processes(state)) >= 2  # SuperLink and sshd at least
    if records == "garbage":  # no file names them any more: only the marker can
        for path in [state / "local.json", *state.glob("vms/*/emulated.json")]:
            path.write_bytes(b"\xff{garbage")
    down = _fedcloud("down", "--config", str(stack))  # the lock died with its holder
    assert down.returncode == 0, down.stderr
    assert "stopped" in down.stdout
    time.sleep(0.5)
    assert _stack_processes(state) == {}
    again = _fedcloud("down", "--config", str(stack))
    assert again.returncode == 0 and "nothing" in again.stdout, again.stdout
    assert "note:" not in again.stdout  # the unreadable files were set aside the first time


def test_second_up_refuses_and_sigterm_stops_the_first(tmp_path: Path) -> None:
    stack, state = _stack(tmp_path)
    state.mkdir(mode=0o700)
    (state / "outputs.json").write_text(json.dumps(GOOD))
    first = _start_up(stack)
    try:
        link = _wait_for("SuperLink", lambda: _superlink_pid(state), first, 120)
        start = time.monotonic()
        second = _fedcloud("up", "--config", str(stack))
        took = time.monotonic() - start
        last = second.stderr.strip().splitlines()[-1]
        assert second.returncode == 2, second.stderr[-2000:]
        assert last.startswith("fedcloud: error: stack 'crash' is busy: `fedcloud up` (pid "
                               f"{first.pid}, started "), last
        assert took < 60  # at once after its own validation: it waits for nothing
        blocked = _fedcloud("down", "--config", str(stack))
        assert blocked.returncode == 2 and "is busy" in blocked.stderr
        os.kill(link, 0)  # the first run's SuperLink survived both
        assert first.poll() is None
        first.send_signal(signal.SIGTERM)
        start = time.monotonic()
        _, err = first.communicate(timeout=120)
        assert time.monotonic() - start < 60
        time.sleep(0.5)
        left = _stack_processes(state)  # before any `down`: up stopped what it started
    finally:
        if first.poll() is None:
            first.kill()
            first.communicate()
        _fedcloud("down", "--config", str(stack))
    assert first.returncode == 143, err[-2000:]
    assert "was interrupted by SIGTERM" in err.strip().splitlines()[-1]
    assert left == {}
    doc = json.loads((state / "outputs.json").read_text())
    assert doc["attempt"]["status"] == "INTERRUPTED"
    assert doc["lastGood"]["training"]["runId"] == "42"
    assert doc["aggregator"]["superlinkAddress"] != GOOD["aggregator"].get("superlinkAddress")
