"""The FL Initializer's side of a resume: when a run counts as its aggregator's loss, and the job.

A ``flwr`` double answers ``run_info``/``stop_run`` the way the real CLI does before and after a
SuperLink dies; the stream double is what ``flwr run --stream`` leaves behind.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from fedcloud.core.errors import TrainingError
from fl.initializer.flwr_cli import RunInfo
from fl.initializer.training import (
    AGGREGATOR_LOST,
    CONNECTION_LOST_TEXT,
    TrainingResult,
    _final_status,
    _follow_to_end,
    _merged,
)


def _info(status: str, details: str = "") -> RunInfo:
    return RunInfo(run_id=7, status=status, details=details, elapsed_s=1.0, inbound_bytes=1,
                   outbound_bytes=2, raw={})


@dataclass
class _Stream:
    lines: list[str]
    run_id: int = 7
    closed: bool = False

    def wait(self, timeout_s: float | None) -> bool:
        return True

    def close(self) -> None:
        self.closed = True


@dataclass
class _Cli:
    answers: list[RunInfo | None]
    stopped: list[int] = field(default_factory=list)

    def run_info(self, connection: str, run_id: int) -> RunInfo:
        answer = self.answers.pop(0) if len(self.answers) > 1 else self.answers[0]
        if answer is None:
            raise TrainingError("Connection to the SuperLink is unavailable.", "retry")
        return answer

    def stop_run(self, run_id: int, connection: str) -> None:
        self.stopped.append(run_id)


def test_a_silent_superlink_or_a_dead_serverapp_is_the_aggregators_loss() -> None:
    assert _final_status([], [], None, False)[0] == AGGREGATOR_LOST
    dead = _info("finished:failed", "No heartbeat received from the task")
    assert _final_status([], [], dead, False) == (
        AGGREGATOR_LOST, "the ServerApp died (No heartbeat received from the task)")
    # What the ServerApp said itself wins; other failures are not resumed.
    mark = [{"status": "NODES_LOST", "detail": "1 node"}]
    assert _final_status([], mark, dead, False) == ("NODES_LOST", "1 node")
    assert _final_status([], [], _info("finished:failed", "ImportError"), False)[0] == "FAILED"
    assert _final_status([], [], _info("finished:stopped"), False)[0] == "STOPPED"


def test_a_stream_broken_by_the_superlink_ends_the_wait_at_once() -> None:
    # The SuperLink is back (restarted) but the run's ServerApp went with the old one.
    cli = _Cli([_info("running")])
    info, timed_out = _follow_to_end(cli, _Stream(["x", f"{CONNECTION_LOST_TEXT}."]),  # type: ignore[arg-type]
                                     bound=60)
    assert (info, timed_out) == (None, False)
    # Still down: the same.
    assert _follow_to_end(_Cli([None]), _Stream(["x"]), bound=60) == (None, False)  # type: ignore[arg-type]
    # A finished run is read as it is.
    done = _info("finished:completed")
    assert _follow_to_end(_Cli([done]), _Stream(["x"]), bound=60) == (done, False)  # type: ignore[arg-type]


def _result(run_id: int, rounds: list[dict[str, Any]], status: str, **kw: Any) -> TrainingResult:
    return TrainingResult(run_id=run_id, status=status, detail=f"d{run_id}",
                          flower_status="x", rounds=rounds, store_run_id=kw.get("store"),
                          node_ids={}, elapsed_s=10.0, network_bytes=100,
                          flower_runs=(run_id,), resumes=kw.get("resumes", ()))


def test_the_jobs_runs_merge_into_one_result_with_every_round_once() -> None:
    first = _result(1, [{"round": 1, "v": "a"}], AGGREGATOR_LOST)
    second = _result(2, [{"round": 1, "v": "replayed", "replayed": True},
                         {"round": 2, "v": "b"}, {"round": 3, "v": "c"}], "COMPLETED",
                     store="s1", resumes=({"from_round": 1},))
    merged = _merged([first, second])
    assert [r["round"] for r in merged.rounds] == [1, 2, 3]
    assert merged.rounds[0]["v"] == "replayed"
    assert (merged.status, merged.run_id, merged.store_run_id) == ("COMPLETED", 2, "s1")
    assert merged.flower_runs == (1, 2) and merged.interruptions == ("d1",)
    assert (merged.elapsed_s, merged.network_bytes) == (20.0, 200)
    assert merged.resumes == ({"from_round": 1},)



def test_the_supervised_superlink_comes_back_like_its_systemd_unit(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from fedcloud.core.procs import spawn
    from fl.initializer import superlink
    from fl.initializer.superlink import SuperLinkProcess, SupervisedSuperLink

    monkeypatch.setattr(superlink, "RESTART_S", 0.1)
    starts: list[SuperLinkProcess] = []

    def start() -> SuperLinkProcess:  # a stand-in process: what is tested is the restart
        proc = spawn(["sleep", "60"], {"PATH": "/usr/bin:/bin"}, tmp_path / "link.log")
        starts.append(SuperLinkProcess("127.0.0.1:9", None, proc))
        return starts[-1]

    restarted: list[int] = []
    link = SupervisedSuperLink(start, on_restart=lambda new: restarted.append(new.process.pid))
    try:
        first = link.process
        first.proc.kill()
        deadline = time.monotonic() + 20
        while not restarted and time.monotonic() < deadline:
            time.sleep(0.05)
        assert restarted == [link.process.pid] and link.process is not first
        assert first.proc.poll() is not None and link.alive() and link.restarts == 1
        # Released: no longer watched, still running (its owner stops it later).
        link.release()
        link.process.proc.kill()
        time.sleep(0.5 + 0.3)
        assert len(starts) == 2
    finally:
        link.stop()
