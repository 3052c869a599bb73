"""The local stack under hostile state: the lock, orphans, corrupt files, failed attempts.

Also: validation before anything is touched; the state directory's mode.

Fast: stand-in processes (``sleep`` with the stack's marker, a process whose command line looks
like this stack's SuperLink) instead of sshd and Flower; ``_run`` is replaced where a test is
about what ``up`` does around an attempt. tests/local/test_local_crash.py does it for real.
"""

from __future__ import annotations

import json
import os
import signal
import stat
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from fedcloud.core.errors import FedcloudError, OrchestratorError, PlanError, TrainingError
from fedcloud.core.stack import StackConfig, load
from fedcloud.local import history, stack
from fedcloud.local.emulated import MARKER_ENV as VM_MARKER
from fedcloud.local.state import MARKER_ENV, StackBusy, marker_value

ROOT = Path(__file__).resolve().parents[2]
TOKEN = "0123456789abcdef0123456789abcdef"
SLEEP = "import time; time.sleep(120)"

STACK = """config:
  fedcloud:stateDir: {state}
  fedcloud:aggregator: {{target: local}}
  fedcloud:limits: {{maxCost: 85000, maxLatencyMs: {latency}}}
  fedcloud:participants:
    - name: p1
      location: {{region: 'aws:us-east-1'}}
      egressCidr: 127.0.1.64/28
      vms:
        - {{id: vm-001, host: 127.0.1.65, state: Active, vcpus: 2, memoryGb: 8, diskGb: 40}}
"""


def _cfg(tmp: Path, latency: int = 250) -> StackConfig:
    path = tmp / "Pulumi.faults.yaml"
    path.write_text(STACK.format(state=tmp / "state", latency=latency))
    return load(path=path)


def _state(cfg: StackConfig) -> Path:
    cfg.state_dir.mkdir(exist_ok=True)
    return cfg.state_dir


@pytest.fixture
def procs() -> Any:
    """Start stand-in processes; kill whatever is left at the end."""
    started: list[subprocess.Popen[bytes]] = []

    def start(*argv: str, env: dict[str, str] | None = None, cmd: list[str] | None = None,
              **kw: Any) -> subprocess.Popen[bytes]:
        p = subprocess.Popen(cmd or [sys.executable, "-c", SLEEP, *argv],
                             env={**os.environ, **(env or {})}, start_new_session=True, **kw)
        started.append(p)
        return p

    yield start
    for p in started:
        p.kill()
        p.wait()


def _gone(p: subprocess.Popen[bytes], timeout: float = 15.0) -> bool:
    try:
        p.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        return False
    return True


def _holder(state: Path, command: str = "fedcloud up") -> subprocess.Popen[str]:
    code = (f"import time\nfrom pathlib import Path\nfrom fedcloud.local.state import locked\n"
            f"with locked(Path({str(state)!r}), {command!r}, 'faults'):\n"
            "    print('held', flush=True)\n    time.sleep(120)\n")
    p = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True,
                         cwd=ROOT)
    assert p.stdout is not None and p.stdout.readline().strip() == "held"
    return p


# --- the lock -----------------------------------------------------------------------------------

def test_second_up_or_down_refuses_at_once_naming_the_holder(tmp_path: Path) -> None:
    cfg = _cfg(tmp_path)
    holder = _holder(_state(cfg))
    try:
        start = time.monotonic()
        with pytest.raises(StackBusy) as busy:
            stack.down(cfg)
        assert time.monotonic() - start < 2.0
        text = str(busy.value)
        assert "\n" not in text
        assert f"pid {holder.pid}" in text and "`fedcloud up`" in text and "started 20" in text
        assert str(cfg.state_dir / ".lock") in text and "To fix: wait for it to end" in text
        with pytest.raises(StackBusy, match=f"pid {holder.pid}"):
            stack.up(cfg, report=lambda _line: None)
        cli = subprocess.run([sys.executable, "-m", "fedcloud.cli.main", "down", "--config",
                              str(cfg.source)], capture_output=True, text=True, cwd=ROOT,
                             timeout=120, check=False)
        assert cli.returncode == 2
        assert cli.stderr.strip().splitlines()[-1].startswith("fedcloud: error: stack 'faults' "
                                                              "is busy")
    finally:
        holder.kill()
        holder.wait()


def test_a_holder_killed_by_sigkill_leaves_no_stale_lock(tmp_path: Path) -> None:
    cfg = _cfg(tmp_path)
    holder = _holder(_state(cfg))
    os.kill(holder.pid, signal.SIGKILL)
    holder.wait()
    assert json.loads((cfg.state_dir / ".lock").read_text())["pid"] == holder.pid
    assert stack.down(cfg).notes == []  # proceeds: the kernel released the flock


def test_a_lock_path_that_is_not_a_file_is_refused_by_up_and_set_aside_by_down(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    cfg = _cfg(tmp_path)
    (_state(cfg) / ".lock").mkdir()
    monkeypatch.setattr(stack, "_attempt", lambda *a: pytest.fail("up went on"))
    with pytest.raises(FedcloudError, match=r"\.lock is not a regular file.*fedcloud down"):
        stack.up(cfg, report=lambda _line: None)
    done = stack.down(cfg)
    assert any(".lock is not a regular file" in n and "Moved it to" in n for n in done.notes)
    assert (cfg.state_dir / ".lock").is_file()


# --- validation first; the state directory's mode ---------------------------------------------

def test_a_config_error_touches_no_file_mode_or_process(tmp_path: Path, procs: Any) -> None:
    cfg = _cfg(tmp_path, latency=1)  # no region answers within 1 ms
    state = _state(cfg)
    os.chmod(state, 0o755)
    link = procs("flower-superlink", "--database", str(state / "superlink" / "superlink.db"))
    marked = procs(env={MARKER_ENV: marker_value(state)})
    (state / "local.json").write_text(json.dumps({"superlink": {"pid": link.pid}}))
    before = {p.name: p.stat().st_mtime_ns for p in state.iterdir()}
    with pytest.raises(PlanError):
        stack.up(cfg, report=lambda _line: None)
    assert stat.S_IMODE(state.stat().st_mode) == 0o755
    assert {p.name: p.stat().st_mtime_ns for p in state.iterdir()} == before
    assert link.poll() is None and marked.poll() is None
    (tmp_path / "fresh").mkdir()
    fresh = _cfg(tmp_path / "fresh", latency=1)
    with pytest.raises(PlanError):
        stack.up(fresh, report=lambda _line: None)
    assert not fresh.state_dir.exists()


@pytest.mark.parametrize("existing", [True, False])
def test_up_sets_0700_only_on_a_directory_it_creates(tmp_path: Path, existing: bool,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    cfg = _cfg(tmp_path)
    if existing:
        _state(cfg)
        os.chmod(cfg.state_dir, 0o775)
    monkeypatch.setattr(stack, "_attempt", lambda *a: {"ran": True})
    assert stack.up(cfg, report=lambda _line: None) == {"ran": True}
    assert stat.S_IMODE(cfg.state_dir.stat().st_mode) == (0o775 if existing else 0o700)


# --- processes found by marker ------------------------------------------------------------------

def test_down_stops_unrecorded_processes_by_marker_only_of_this_stack_and_user(
        tmp_path: Path, procs: Any) -> None:
    cfg = _cfg(tmp_path)
    state = _state(cfg)
    mine = [procs(env={MARKER_ENV: marker_value(state)}) for _ in range(2)]
    # an sshd retitles itself over its environment: it is known by its config's path
    mine.append(procs("sshd", "-D", "-f", f"{state}/vms/p1/vm-001-x/sshd_config"))
    other_sshd = procs("sshd", "-D", "-f", f"{state}-x/vms/p1/vm-001-x/sshd_config")
    other_stack = procs(env={MARKER_ENV: marker_value(tmp_path / "other")})
    prefix = procs(env={MARKER_ENV: marker_value(state) + "-x"})
    other_user = procs(env={MARKER_ENV: marker_value(state)}, cmd=["sleep", "120"], user=65534)
    time.sleep(0.3)  # let the children exec (their environ is readable from then on)
    done = stack.down(cfg)
    assert all(_gone(p) for p in mine)
    assert done.orphans == 3 and done.stopped == 3
    assert other_stack.poll() is None and prefix.poll() is None and other_user.poll() is None
    assert other_sshd.poll() is None


def test_down_without_a_state_directory_still_stops_marked_orphans(tmp_path: Path,
                                                                   procs: Any) -> None:
    cfg = _cfg(tmp_path)
    orphan = procs(env={MARKER_ENV: marker_value(cfg.state_dir)})
    time.sleep(0.3)
    assert stack.down(cfg).orphans == 1
    assert _gone(orphan) and not cfg.state_dir.exists()


def test_a_recorded_pid_reused_by_another_process_is_not_signalled(tmp_path: Path,
                                                                   procs: Any) -> None:
    cfg = _cfg(tmp_path)
    state = _state(cfg)
    stranger = procs("flower-superlink")  # a SuperLink, but not this stack's
    link = procs("flower-superlink", "--database", str(state / "superlink" / "superlink.db"))
    (state / "local.json").write_text(json.dumps({"superlink": {"pid": stranger.pid}}))
    assert stack.down(cfg).stopped == 0 and stranger.poll() is None
    (state / "local.json").write_text(json.dumps({"superlink": {"pid": link.pid}}))
    assert stack.down(cfg).recorded == 1 and _gone(link)


# --- corrupt or foreign state files -------------------------------------------------------------

BAD: dict[str, bytes | None] = {
    "non-UTF-8": b"\xff\xfe{\x80}",
    "garbage JSON": b'{"superlink": {"pid": 12',
    "deep JSON": b"[" * 100_000,
    "a list": b"[1, 2, 3]",
    "a directory": None,
}
FILES = {"local.json": "local.json", "emulated.json": "vms/p1/emulated.json",
         "queue": "orchestrator/queue-p1.json", "outputs.json": "outputs.json"}


def _plant(state: Path, rel: str, content: bytes | None) -> Path:
    path = state / rel
    path.parent.mkdir(parents=True, exist_ok=True)
    if content is None:
        path.mkdir()
        (path / "x").write_text("x")
    else:
        path.write_bytes(content)
    return path


@pytest.mark.parametrize("kind", list(BAD))
@pytest.mark.parametrize("which", list(FILES))
def test_down_sets_an_unreadable_state_file_aside_and_reports_it(
        tmp_path: Path, which: str, kind: str, procs: Any) -> None:
    cfg = _cfg(tmp_path)
    state = _state(cfg)
    path = _plant(state, FILES[which], BAD[kind])
    orphan = procs(env={MARKER_ENV: marker_value(state)})
    time.sleep(0.3)
    done = stack.down(cfg)
    assert _gone(orphan)  # what no readable file names is still found by its marker
    if which == "queue" and kind == "a list":
        moved = [n for n in done.notes if "queue-p1.json" in n]
    else:
        moved = [n for n in done.notes if str(path) in n]
    assert len(moved) == 1 and "Moved it to" in moved[0] and "\n" not in moved[0]
    asides = list(path.parent.glob(f"{path.name}.corrupt-*"))
    assert len(asides) == 1 and not os.path.lexists(path)
    assert stack.down(cfg).notes == []  # the directory is usable again


@pytest.mark.parametrize("kind", list(BAD))
def test_up_refuses_an_unreadable_queue_before_acting(tmp_path: Path, kind: str, procs: Any,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    cfg = _cfg(tmp_path)
    state = _state(cfg)
    path = _plant(state, FILES["queue"], BAD[kind])
    marked = procs(env={MARKER_ENV: marker_value(state)})
    monkeypatch.setattr(stack, "_attempt", lambda *a: pytest.fail("up went on"))
    with pytest.raises(OrchestratorError) as refused:
        stack.up(cfg, report=lambda _line: None)
    text = str(refused.value)
    assert str(path) in text and "\n" not in text
    assert "To fix: run `fedcloud down --stack faults` (it sets the file aside" in text
    assert marked.poll() is None  # the previous run was not touched


@pytest.mark.parametrize("which", ["local.json", "emulated.json", "outputs.json"])
def test_up_sets_aside_a_previous_runs_unreadable_file_and_goes_on(
        tmp_path: Path, which: str, monkeypatch: pytest.MonkeyPatch) -> None:
    cfg = _cfg(tmp_path)
    path = _plant(_state(cfg), FILES[which], b"\xff garbage")
    seen: list[Any] = []

    def attempt(*args: Any) -> dict[str, Any]:
        seen.append(args[-1])  # the last good run's outputs
        return {"ran": True}

    monkeypatch.setattr(stack, "_attempt", attempt)
    lines: list[str] = []
    assert stack.up(cfg, report=lines.append) == {"ran": True}
    assert any(str(path) in ln and "Moved it to" in ln for ln in lines)
    assert seen == [None]  # no last good run could be read


def test_wrong_types_and_non_numeric_pids_are_skipped_and_reported(tmp_path: Path,
                                                                   procs: Any) -> None:
    cfg = _cfg(tmp_path)
    state = _state(cfg)
    vm_proc = procs(env={VM_MARKER: TOKEN})
    (state / "local.json").write_text(json.dumps(
        {"superlink": {"pid": "12; rm -rf /"}, "vmRoots": 5}))
    _plant(state, "vms/p1/emulated.json", json.dumps({"vms": [
        {"id": "vm-001", "pid": "abc", "token": TOKEN}, 7, {"token": "../../x"},
        {"pid": -1, "token": TOKEN.upper()}]}).encode())
    _plant(state, "vms/p2/emulated.json", json.dumps({"vms": {"a": 1}}).encode())
    _plant(state, "orchestrator/queue-p1.json", b'{"last": 7}')
    time.sleep(0.3)
    done = stack.down(cfg)
    assert _gone(vm_proc)  # the VM with a bad pid is still stopped by its token
    notes = "\n".join(done.notes)
    assert "superlink.pid '12; rm -rf /' is not a process id" in notes
    assert "entry 0: pid 'abc' is not a process id" in notes
    assert "entry 1 is not a VM record" in notes and "entry 2 is not a VM record" in notes
    assert "vms/p2/emulated.json has no list of VMs" in notes
    assert "queue-p1.json: not a round-robin queue file" in notes
    assert not (state / "local.json").exists()
    assert stack.down(cfg).notes == [f"{state}/vms/p1/emulated.json: entry {i} is not a VM "
                                     "record with a token; skipped it." for i in (1, 2, 3)]


def test_a_state_file_that_is_a_fifo_or_dev_zero_does_not_block(tmp_path: Path) -> None:
    cfg = _cfg(tmp_path)
    state = _state(cfg)
    os.mkfifo(state / "local.json")
    (state / "outputs.json").symlink_to("/dev/zero")
    start = time.monotonic()
    done = stack.down(cfg)
    assert time.monotonic() - start < 15
    assert sum("Moved it to" in n for n in done.notes) == 2


# --- attempts: outputs.json keeps the last good run -------------------------------------------

GOOD = {"aggregator": {"cloud": "local"}, "plan": {"choice": {}}, "participants": {},
        "training": {"runId": "42", "status": "COMPLETED"}, "timings": {}}


def test_last_good_and_attempt_records() -> None:
    assert history.last_good(None) is None
    assert history.last_good(GOOD) == GOOD  # written before attempts were recorded
    failed = {**GOOD, "training": {"status": "FAILED"}, "attempt": {"status": "FAILED"},
              "lastGood": GOOD}
    assert history.last_good(failed) == GOOD
    ok = {**GOOD, "attempt": {"status": "COMPLETED"}, "lastGood": None}
    assert history.last_good(ok) == {k: v for k, v in ok.items() if k != "lastGood"}
    assert history.last_good({"attempt": "x", "lastGood": [1]}) is None


def _fail_in_run(exc: BaseException) -> Any:
    def run(cfg: StackConfig, phases: Any, report: Any, partial: dict[str, Any]) -> Any:
        partial["aggregator"] = {"cloud": "local", "superlinkAddress": "127.0.0.1:1"}
        phases.current = stack.TRAINING
        raise exc
    return run


def test_a_failed_up_records_its_error_beside_the_last_good_run(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    cfg = _cfg(tmp_path)
    (_state(cfg) / "outputs.json").write_text(json.dumps({**GOOD, "attempt": {
        "status": "COMPLETED", "endedAt": "2026-01-01T00:00:00+00:00"}}))
    monkeypatch.setattr(stack, "_run", _fail_in_run(TrainingError("run 7 ended FAILED.")))
    lines: list[str] = []
    with pytest.raises(TrainingError, match="run 7 ended FAILED"):
        stack.up(cfg, report=lines.append)
    doc = json.loads((cfg.state_dir / "outputs.json").read_text())
    assert doc["attempt"]["status"] == "FAILED" and "run 7 ended FAILED" in doc["attempt"]["error"]
    assert doc["attempt"]["phase"] == stack.TRAINING
    assert doc["aggregator"]["superlinkAddress"] == "127.0.0.1:1"  # this attempt's, not the old
    assert doc["training"] is None and doc["lastGood"]["training"]["runId"] == "42"
    assert any("under 'lastGood'" in ln and "run 42" in ln for ln in lines)
    # a second failure keeps the same last good run
    with pytest.raises(TrainingError):
        stack.up(cfg, report=lines.append)
    assert json.loads((cfg.state_dir / "outputs.json").read_text())["lastGood"][
        "training"]["runId"] == "42"


@pytest.mark.parametrize(("how", "code"), [("SIGINT", 130), ("SIGTERM", 143)])
def test_an_interrupted_up_stops_what_it_started_and_records_it(
        tmp_path: Path, how: str, code: int, procs: Any,
        monkeypatch: pytest.MonkeyPatch) -> None:
    cfg = _cfg(tmp_path)
    (_state(cfg) / "outputs.json").write_text(json.dumps(GOOD))
    started: list[subprocess.Popen[bytes]] = []

    def run(cfg: StackConfig, phases: Any, report: Any, partial: dict[str, Any]) -> Any:
        phases.current = "SuperLink (TLS, node authentication)"
        started.append(procs())  # inherits the marker from up's environment
        time.sleep(0.3)
        os.kill(os.getpid(), getattr(signal, how))
        time.sleep(30)
        pytest.fail("not interrupted")

    monkeypatch.setattr(stack, "_run", run)
    handler = signal.getsignal(signal.SIGTERM)
    with pytest.raises(stack.Interrupted) as stopped:
        stack.up(cfg, report=lambda _line: None)
    assert stopped.value.exit_code == code and "\n" not in str(stopped.value)
    assert "during SuperLink" in str(stopped.value)
    assert _gone(started[0], timeout=1.0)
    assert MARKER_ENV not in os.environ
    assert signal.getsignal(signal.SIGTERM) == handler
    doc = json.loads((cfg.state_dir / "outputs.json").read_text())
    assert doc["attempt"]["status"] == "INTERRUPTED" and how.removeprefix("SIG") in doc[
        "attempt"]["error"]
    assert doc["lastGood"] == GOOD and doc["training"] is None


def test_a_pinned_host_key_is_kept_for_an_emulated_vm() -> None:
    from dataclasses import replace

    from fedcloud.core.participants import VmSpec
    from fedcloud.local.stack import keep_pins

    base = VmSpec(id="vm-001", host="127.0.1.1", port=22, user="root", key_path=None,
                  host_key_fingerprint=None, state="Active", vcpus=4, memory_gb=8, disk_gb=40)
    pinned = "SHA256:" + "A" * 43
    generated = "SHA256:" + "B" * 43
    started = (replace(base, host_key_fingerprint=generated, port=40022),
               replace(base, id="vm-002", host_key_fingerprint=generated))
    kept = keep_pins((replace(base, host_key_fingerprint=pinned), replace(base, id="vm-002")),
                     started)
    assert kept[0].host_key_fingerprint == pinned and kept[0].port == 40022
    assert kept[1].host_key_fingerprint == generated  # nothing pinned: the generated key
