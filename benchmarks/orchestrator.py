"""The orchestrator experiment on real sshd VMs: orchestrator vs a random VM choice.

Each participant has the reference five VMs (``fedcloud.local.emulated.brief_vms``: vm-001/vm-002
healthy, vm-003/vm-004 Inactive = no sshd, vm-005 Active but below the minimum spec and really
too small to start a SuperNode). A *task* is one dispatch: every participant's SuperNode started
over SSH and seen online by a real TLS SuperLink (node auth on) on loopback, then stopped.

* ``orchestrator``: probe, filter, round-robin queue, retries (``fl.orchestrator``).
* ``random``: one VM chosen uniformly among the participant's five, one start, no retry
  (the same start code: ``Orchestrator.start_on``).
* ``faulty``: every Active VM's ``flower-supernode`` fails each start with probability 0.2
  (the emulated VM's fault file; the start command really exits non-zero).
* ``dispatch_s``: median wall time of one orchestrator dispatch (probe + filter + assign +
  start until online) for 3 participants x 5 VMs and for 20 x 5.

Rates are per participant-task (3 participants x 20 tasks = 60). Prints the issue's JSON on
stdout; counts and extra figures (run-level success, injected faults) go to stderr as JSON.

Usage: ``.venv/bin/python benchmarks/orchestrator.py [--tasks 20] [--seed 1] [--no-20x5]``
(about 25 minutes on 2 cores); ``--dispatch-only`` times clean dispatches only
(benchmarks/README.md, "Orchestrator").
"""

from __future__ import annotations

import argparse
import json
import logging
import random
import signal
import statistics
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from fedcloud.core.flower import quiet_flower_here
from fedcloud.core.participants import Location, Participant
from fedcloud.core.stack import OrchestratorSettings
from fedcloud.local.emulated import EmulatedCloud, brief_vms
from fedcloud.local.localfed import start_local_superlink
from fl.initializer.superlink import SuperLinkProcess
from fl.initializer.training import CONNECTION
from fl.orchestrator import (
    NodeLaunch,
    NodePlacement,
    Orchestrator,
    SuperLinkNodes,
)
from fl.orchestrator.results import StartFailed
from fl.orchestrator.ssh import ParamikoTransport

LINK_HOST = "127.0.1.253"
FIRST_HOST = 60  # participants i uses 127.0.1.(60 + 5 i) .. +4
MAX_WAIT_TIME_S = 60.0


@dataclass
class Bench:
    """One federation: SuperLink, emulated clouds (one per participant), orchestrator."""

    root: Path
    link: SuperLinkProcess
    clouds: dict[str, EmulatedCloud]
    orch: Orchestrator


def _settings(online_timeout_s: float) -> OrchestratorSettings:
    # The project defaults (Pulumi.yaml) except the online timeout, raised for 20 nodes
    # starting at once on 2 shared cores.
    return OrchestratorSettings(min_vcpus=2, min_memory_gb=4, min_disk_gb=20, min_free_disk_gb=2,
                                max_attempts=5, backoff_s=1.0, online_timeout_s=online_timeout_s,
                                host_key_policy="reject")


def build(root: Path, names: list[str], online_timeout_s: float) -> Bench:
    fed = start_local_superlink(root, names, link_host=LINK_HOST)
    link, certs = fed.link, fed.certs
    clouds: dict[str, EmulatedCloud] = {}
    try:
        participants = []
        for i, name in enumerate(names):
            clouds[name] = EmulatedCloud(root / f"vms-{name}", first_host=FIRST_HOST + 5 * i)
            participants.append(Participant(name, Location(region="aws:us-east-1"), None, None,
                                            clouds[name].start(brief_vms())))
        launches = {n: NodeLaunch(link.address, certs.ca.cert, certs.nodes[n].private_key,
                                  data_dir=str(root / "data" / n),
                                  max_wait_time_s=MAX_WAIT_TIME_S) for n in names}
        nodes = SuperLinkNodes(fed.cli, CONNECTION, fed.node_ids)
        orch = Orchestrator(participants, launches, transport=ParamikoTransport(), nodes=nodes,
                            settings=_settings(online_timeout_s), state_dir=root / "state")
    except BaseException:
        for cloud in clouds.values():
            cloud.stop()
        link.stop()
        raise
    return Bench(root, link, clouds, orch)


def close(bench: Bench) -> None:
    for cloud in bench.clouds.values():
        cloud.stop()
    bench.link.stop()


def set_faults(bench: Bench, rate: float) -> None:
    for cloud in bench.clouds.values():
        for vm in cloud.inventory():
            if vm.active:
                cloud.set_fault_rate(vm.id, rate)


def faults_injected(bench: Bench) -> int:
    return sum(cloud.faults_injected(vm.id) for cloud in bench.clouds.values()
               for vm in cloud.inventory() if vm.active)


def orchestrator_task(bench: Bench) -> tuple[dict[str, bool], float]:
    start = time.monotonic()
    result = bench.orch.dispatch()
    elapsed = time.monotonic() - start
    bench.orch.stop(result.placements())
    return {name: res.ok for name, res in result.items()}, elapsed


def random_task(bench: Bench, rng: random.Random) -> dict[str, bool]:
    picks = {name: rng.choice(p.vms) for name, p in bench.orch.participants.items()}

    def one(name: str) -> NodePlacement | None:
        try:
            return bench.orch.start_on(picks[name], name)
        except StartFailed:
            return None

    with ThreadPoolExecutor(max_workers=len(picks)) as pool:
        placed = dict(zip(picks, pool.map(one, picks), strict=True))
    bench.orch.stop({n: p for n, p in placed.items() if p is not None})
    return {name: p is not None for name, p in placed.items()}


def rates(outcomes: list[dict[str, bool]]) -> dict[str, float]:
    total = sum(len(o) for o in outcomes)
    ok = sum(sum(o.values()) for o in outcomes)
    return {"dropout_rate": round(1 - ok / total, 4), "success_rate": round(ok / total, 4)}


def details(outcomes: list[dict[str, bool]]) -> dict[str, float | int]:
    total = sum(len(o) for o in outcomes)
    return {"participant_tasks": total,
            "dropped": total - sum(sum(o.values()) for o in outcomes),
            "runs_with_every_participant_online": sum(all(o.values()) for o in outcomes),
            "runs": len(outcomes)}


def experiment_3x5(root: Path, tasks: int, seed: int, fault_rate: float,
                   ) -> tuple[dict[str, object], float, dict[str, object]]:
    bench = build(root / "3x5", ["us", "asia", "eu"], online_timeout_s=60)
    rng = random.Random(seed)
    out: dict[str, object] = {}
    extra: dict[str, object] = {}
    times: list[float] = []
    try:
        for mode, rate in (("clean", 0.0), ("faulty", fault_rate)):
            set_faults(bench, rate)
            before = faults_injected(bench)
            orch_runs: list[dict[str, bool]] = []
            for _ in range(tasks):
                outcome, elapsed = orchestrator_task(bench)
                orch_runs.append(outcome)
                if mode == "clean":
                    times.append(elapsed)
            rand_runs = [random_task(bench, rng) for _ in range(tasks)]
            out[mode] = {"orchestrator": rates(orch_runs), "random": rates(rand_runs)}
            figures = {"orchestrator": details(orch_runs), "random": details(rand_runs),
                       "faults_injected": faults_injected(bench) - before}
            extra[mode] = figures
            print(json.dumps({"progress": mode, **figures}), file=sys.stderr, flush=True)
    finally:
        close(bench)
    extra["dispatch_s_3x5_all"] = [round(t, 2) for t in times]
    return out, statistics.median(times), extra


def dispatch_3x5(root: Path, runs: int) -> tuple[float, list[float]]:
    """Only the clean dispatch timing at 3 x 5 (no random or faulty modes)."""
    bench = build(root / "3x5", ["us", "asia", "eu"], online_timeout_s=60)
    times: list[float] = []
    try:
        for _ in range(runs):
            outcome, elapsed = orchestrator_task(bench)
            if not all(outcome.values()):
                raise SystemExit(f"a clean 3x5 dispatch failed: {outcome}")
            times.append(elapsed)
    finally:
        close(bench)
    return statistics.median(times), times


def experiment_20x5(root: Path, runs: int) -> tuple[float, list[float], int]:
    names = [f"p{i:02d}" for i in range(1, 21)]
    bench = build(root / "20x5", names, online_timeout_s=180)
    times = []
    failed = 0
    try:
        for _ in range(runs):
            start = time.monotonic()
            result = bench.orch.dispatch()
            times.append(time.monotonic() - start)
            failed += len(result.failed)
            bench.orch.stop(result.placements())
    finally:
        close(bench)
    return statistics.median(times), times, failed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", type=int, default=20, help="FL tasks per mode")
    parser.add_argument("--seed", type=int, default=1, help="seed of the random VM choice")
    parser.add_argument("--fault-rate", type=float, default=0.2, help="per-start failure rate")
    parser.add_argument("--runs-20x5", type=int, default=2, help="dispatches timed at 20x5")
    parser.add_argument("--no-20x5", action="store_true", help="skip the 20x5 timing")
    parser.add_argument("--dispatch-only", action="store_true",
                        help="time --tasks clean 3x5 dispatches (and the 20x5 ones) only")
    args = parser.parse_args()
    quiet_flower_here()
    # A SIGTERM (timeout, Ctrl-C from a wrapper) still stops the emulated VMs and SuperLink.
    signal.signal(signal.SIGTERM, lambda _sig, _frame: sys.exit(143))
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr)
    logging.getLogger("paramiko").setLevel(logging.CRITICAL)
    with tempfile.TemporaryDirectory(prefix="fedcloud-orch-bench-") as tmp:
        root = Path(tmp)
        if args.dispatch_only:
            d3, all3 = dispatch_3x5(root, args.tasks)
            out: dict[str, object] = {}
            extra: dict[str, object] = {"dispatch_s_3x5_all": [round(t, 2) for t in all3]}
        else:
            out, d3, extra = experiment_3x5(root, args.tasks, args.seed, args.fault_rate)
        dispatch: dict[str, float | None] = {"3x5": round(d3, 2), "20x5": None}
        if not args.no_20x5:
            d20, all20, failed20 = experiment_20x5(root, args.runs_20x5)
            dispatch["20x5"] = round(d20, 2)
            extra["dispatch_s_20x5_all"] = [round(t, 2) for t in all20]
            extra["failed_participants_20x5"] = failed20
    out["dispatch_s"] = dispatch
    print(json.dumps(extra), file=sys.stderr)
    print(json.dumps(out))


if __name__ == "__main__":
    main()
