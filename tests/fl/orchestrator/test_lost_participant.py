"""A participant lost mid-run: the supervisor's wait-out, the watcher's rejoin/re-dispatch, outputs.

Fast: the scripted transport double (``tests/support/orchestrator_fakes.py``), the real
``supervise.sh`` under ``sh`` with a scripted ``launch.sh``, and the output mappers of
``fedcloud/federation.py``.
"""

from __future__ import annotations

import subprocess
import time
from pathlib import Path

from orchestrator_fakes import (
    FakeNodes,
    ScriptedTransport,
    VmScript,
    fake_participant,
    launch,
    settings,
)

from fedcloud.federation import participants_output, training_output
from fl.initializer.training import TrainingResult
from fl.orchestrator import Orchestrator
from fl.orchestrator.nodes import ACTIVATION_HOLD_S, SUPERVISED_REJOIN_S
from fl.orchestrator.orchestrator import LOST_NODE_BOUND_S, REJOIN_TIMEOUT_S
from fl.orchestrator.scripts import start_command, supervisor_script
from fl.orchestrator.watcher import WATCH_INTERVAL_S


def _orch(tmp_path: Path) -> tuple[Orchestrator, ScriptedTransport, FakeNodes]:
    part = fake_participant("us", 1)
    scripts = {f"{vm.host}:{vm.port}": VmScript() if vm.state == "Active"
               else VmScript(connect_error="connect") for vm in part.vms}
    transport = ScriptedTransport(scripts)
    nodes = FakeNodes(transport)
    orch = Orchestrator([part], {"us": launch(tmp_path, "us")}, transport=transport,
                        nodes=nodes, settings=settings(), state_dir=tmp_path / "state",
                        superlink_flwr="1.41.0", sleep=lambda _s: None)
    return orch, transport, nodes


def test_the_bound_is_flowers_heartbeat_expiry_plus_a_start() -> None:
    # flwr 1.41: a dead session stays ONLINE until last heartbeat + 2 x 30 s.
    assert ACTIVATION_HOLD_S == 63.0
    assert SUPERVISED_REJOIN_S == 93.0
    assert LOST_NODE_BOUND_S == SUPERVISED_REJOIN_S + WATCH_INTERVAL_S + REJOIN_TIMEOUT_S == 211.0


def test_watcher_waits_for_the_supervisor_and_records_the_rejoin(tmp_path: Path) -> None:
    orch, transport, nodes = _orch(tmp_path)
    dispatched = orch.dispatch()
    placements = dispatched.placements()
    nodes.online_at["us", "10.1.0.1:22"] = time.time() - 300  # its session came online long ago
    watcher = orch.watcher(placements)
    assert watcher.check_once() == []
    transport.kill_supernode("us")
    # The old session still holds the id (STALE since the death): wait, do not move it yet.
    lost = watcher.check_once()
    assert [(e.kind, e.lost_vm) for e in lost] == [("lost", "vm-001")]
    assert watcher.check_once() == []
    nodes.online_at["us", "10.1.0.1:22"] = time.time()  # the supervisor's restart was accepted
    back = watcher.check_once()
    assert [e.kind for e in back] == ["rejoined"] and "online again" in back[0].reason
    assert placements["us"].vm.id == "vm-001"  # never moved
    assert [e.kind for e in dispatched.events] == ["lost", "rejoined"]
    out = participants_output(dispatched)["us"]
    assert out["status"] == "dispatched, lost and rejoined within its round"
    assert [e["kind"] for e in out["events"]] == ["lost", "rejoined"]


def test_watcher_redispatches_when_the_restarts_are_refused_too_long(tmp_path: Path) -> None:
    orch, transport, nodes = _orch(tmp_path)
    dispatched = orch.dispatch()
    placements = dispatched.placements()
    nodes.online_at["us", "10.1.0.1:22"] = time.time() - 300
    watcher = orch.watcher(placements, rejoin_grace_s=2.0)
    transport.kill_supernode("us")
    assert [e.kind for e in watcher.check_once()] == ["lost"]
    time.sleep(2.1)
    moved = watcher.check_once()
    assert [(e.kind, e.lost_vm) for e in moved] == [("redispatched", "vm-001")]
    assert "not online again within 2 s" in moved[0].reason
    assert moved[0].result is not None and moved[0].result.vm_id == "vm-002"
    # The caller's mapping follows the move, so its stop(placements) stops the moved node.
    assert placements["us"].vm.id == "vm-002"
    assert transport.running_on("us") == ["10.1.0.2:22"]
    # The new supervisor knows the key may still be held.
    starts = [c for c in transport.vms["10.1.0.2:22"].commands if "setsid" in c]
    assert starts and f"supervise.sh 5 {int(ACTIVATION_HOLD_S)} held" in starts[-1]
    out = participants_output(dispatched)["us"]
    assert out["vm"] == "vm-001" and out["vmNow"] == "vm-002"
    assert out["status"] == "dispatched, lost and rejoined within its round, re-dispatched"


def test_start_command_passes_delay_and_hold() -> None:
    plain = start_command("/w/fedcloud-us", 5.0, 63.0)
    assert "setsid sh ./supervise.sh 5 63 </dev/null" in plain
    assert "supervise.sh 5 63 held </dev/null" in start_command("/w/fedcloud-us", 5.0, 63.0,
                                                                 held=True)


def _supervise(tmp_path: Path, runs: list[str], hold_s: int, held: bool, stop_after_s: float,
               ) -> list[tuple[float, str]]:
    """Run the real supervisor with a launch.sh that plays ``runs`` (shell bodies) in order.

    Returns (start time, body) per launch.
    """
    work = tmp_path / "w"
    work.mkdir()
    for i, body in enumerate(runs, start=1):
        (work / f"run{i}.sh").write_text(body + "\n")
    (work / "launch.sh").write_text(
        "n=$(($(cat count 2>/dev/null || echo 0) + 1)); echo $n > count\n"
        'echo "$n $(date +%s.%N)" >> starts\n'
        '[ -e "run$n.sh" ] && exec sh "run$n.sh"\nexec sleep 30\n')
    (work / "supervise.sh").write_text(supervisor_script(fast_exit_s=1))
    argv = ["sh", str(work / "supervise.sh"), "0.2", str(hold_s)] + (["held"] if held else [])
    proc = subprocess.Popen(argv, cwd=work, start_new_session=True)
    try:
        time.sleep(stop_after_s)
    finally:
        (work / "stop").touch()
        subprocess.run(["pkill", "-KILL", "-s", str(proc.pid)], check=False)
        proc.wait(timeout=10)
    starts = []
    for line in (work / "starts").read_text().splitlines():
        n, at = line.split()
        starts.append((float(at), runs[int(n) - 1] if int(n) <= len(runs) else "sleep"))
    return starts


def test_supervisor_waits_out_the_refusal_after_a_death(tmp_path: Path) -> None:
    # Run 1 had joined (ran 1.5 s >= fast_exit_s) and was killed; run 2 is refused at once;
    # run 3 must wait until hold_s after run 1's death, not retry every delay.
    runs = ["sleep 1.5; exit 137", "exit 1", "exit 1"]
    starts = _supervise(tmp_path, runs, hold_s=3, held=False, stop_after_s=6.5)
    assert len(starts) >= 3
    death = starts[0][0] + 1.5
    assert starts[1][0] - death < 1.5  # the first restart after the short delay
    assert starts[2][0] - death >= 3 - 1.0  # then nothing until the hold is over (1 s clock)
    assert len(starts) <= 4  # no refused start every 0.2 s


def test_supervisor_started_held_waits_before_retrying_a_refused_start(tmp_path: Path) -> None:
    starts = _supervise(tmp_path, ["exit 1", "exit 1"], hold_s=3, held=True, stop_after_s=4.5)
    assert len(starts) >= 2
    assert starts[1][0] - starts[0][0] >= 3 - 1.0
    assert len(starts) <= 3


def _training(rounds: list[list[str]], status: str = "COMPLETED") -> TrainingResult:
    return TrainingResult(
        run_id=7, status=status, detail="3 rounds", flower_status="finished:completed",
        rounds=[{"round": i, "metrics": {"accuracy": 0.5}, "contributors": who}
                for i, who in enumerate(rounds, start=1)],
        store_run_id=None, node_ids={"hospital-us": 1, "hospital-kr": 2, "hospital-de": 3},
        elapsed_s=1.0, network_bytes=10, log_lines=[])


def test_training_output_says_who_contributed_and_who_was_missing() -> None:
    full = ["hospital-de", "hospital-kr", "hospital-us"]
    tr = _training([full, ["hospital-de", "hospital-us"], ["hospital-de", "hospital-us"]])
    out = training_output(tr)
    assert out["status"] == "COMPLETED" and out["degraded"] is True
    assert out["droppedParticipants"] == ["hospital-kr"]
    assert out["missedRounds"] == {"hospital-kr": [2, 3]}
    assert out["detail"] == "3 rounds; degraded: hospital-kr missed rounds 2-3"
    assert out["contributors"]["2"] == ["hospital-de", "hospital-us"]
    assert out["rounds"] == 3 and out["runId"] == "7"  # the existing keys stay
    clean = training_output(_training([full, full]))
    assert clean["degraded"] is False and clean["droppedParticipants"] == []
    assert clean["detail"] == "3 rounds"


def test_participants_output_marks_the_lost_rounds(tmp_path: Path) -> None:
    orch, _transport, _nodes = _orch(tmp_path)
    dispatched = orch.dispatch()
    tr = _training([["us", "eu"], ["eu"], ["us", "eu"]])
    tr.node_ids.clear()
    tr.node_ids.update({"us": 1, "eu": 2})
    out = participants_output(dispatched, tr)["us"]
    assert out["status"] == "dispatched, lost in round 2, rejoined in round 3"
    assert out["lostInRounds"] == [2] and out["contributedRounds"] == [1, 3]
    assert participants_output(dispatched)["us"]["status"] == "dispatched"
