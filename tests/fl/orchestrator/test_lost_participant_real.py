"""A participant lost mid-run comes back: ``kill -9`` of one SuperNode during round 2.

Three participants, each with two Active emulated VMs (sshd on 127.0.1.111-116), a TLS SuperLink
with node authentication on 127.0.1.249, the orchestrator and its watcher wired as
``fedcloud.federation.run_federation`` wires them, and ``min-nodes`` = 3: the run completes only
if the killed participant's node is back (supervisor restart or re-dispatch) and contributes.
"""

from __future__ import annotations

import os
import signal
import threading
import time
from dataclasses import replace
from pathlib import Path

import pytest

from fedcloud.core.participants import Location, Participant
from fedcloud.core.stack import OrchestratorSettings
from fedcloud.local.emulated import EmulatedCloud, VmRequest
from fedcloud.local.localfed import start_local_superlink
from fedcloud.local.synth import generate
from fl.app.runconfig import RunConfig
from fl.initializer.training import CONNECTION, run_bound_s, start_training
from fl.orchestrator import NodeLaunch, Orchestrator, SuperLinkNodes
from fl.orchestrator.nodes import ONLINE
from fl.orchestrator.orchestrator import LOST_NODE_BOUND_S
from fl.orchestrator.ssh import ParamikoTransport

pytestmark = pytest.mark.slow

LINK_HOST = "127.0.1.249"
NAMES = ("hospital-us", "hospital-kr", "hospital-de")
VICTIM = "hospital-kr"
IMAGE = 32


def _config(root: Path) -> RunConfig:
    base = RunConfig(model="covid_cnn", width=4, image_size=IMAGE, num_classes=3, rounds=3,
                     local_epochs=1, batch_size=8, learning_rate=0.05, fraction_train=1.0,
                     min_nodes=len(NAMES), phase_timeout_s=45, node_wait_s=90, seed=3)
    return replace(base, tracking_uri=str(root / "registry"), experiment="fedcloud-lost",
                   run_name="lost")


def test_killed_supernode_rejoins_and_contributes_again(tmp_path: Path) -> None:
    data = generate("covid", tmp_path / "data", NAMES, train_per_participant=24,
                    test_per_participant=9, image_size=IMAGE, seed=5)
    clouds = {n: EmulatedCloud(tmp_path / f"vms-{n}", first_host=111 + 2 * i)
              for i, n in enumerate(NAMES)}
    local = start_local_superlink(tmp_path, NAMES, link_host=LINK_HOST)
    try:
        participants = [Participant(n, Location(region="aws:us-east-1"), None, None,
                                    clouds[n].start([VmRequest("vm-001", "Active", 2, 4, 20),
                                                     VmRequest("vm-002", "Active", 2, 4, 20)]))
                        for n in NAMES]
        launches = {n: NodeLaunch(local.link.address, local.certs.ca.cert,
                                  local.certs.nodes[n].private_key, data_dir=str(data[n]),
                                  max_wait_time_s=60) for n in NAMES}
        settings = OrchestratorSettings(min_vcpus=2, min_memory_gb=4, min_disk_gb=20,
                                        min_free_disk_gb=1, max_attempts=3, backoff_s=1.0,
                                        online_timeout_s=60, host_key_policy="reject")
        nodes = SuperLinkNodes(local.cli, CONNECTION, local.node_ids)
        orch = Orchestrator(participants, launches, transport=ParamikoTransport(), nodes=nodes,
                            settings=settings, state_dir=tmp_path / "state")
        dispatched = orch.dispatch()
        assert dispatched.ok, [r.summary() for r in dispatched.values()]
        _run_and_kill(tmp_path, local, orch, dispatched, nodes)
    finally:
        for cloud in clouds.values():
            cloud.stop()
        local.link.stop()


def _run_and_kill(root: Path, local: object, orch: Orchestrator, dispatched: object,
                  nodes: SuperLinkNodes) -> None:
    placements = dispatched.placements()  # type: ignore[attr-defined]
    victim = placements[VICTIM]
    killed_at: list[float] = []
    back_at: list[float] = []

    def on_line(line: str) -> None:
        if not killed_at and "train round 2: sent to" in line:
            pid = int((Path(victim.remote_dir) / "supernode.pid").read_text())
            os.kill(pid, signal.SIGKILL)  # the SuperNode only, not its supervisor
            killed_at.append(time.time())

    stop = threading.Event()

    def watch_back() -> None:
        while not stop.wait(1.0):
            if killed_at and not back_at and nodes.node_state(VICTIM, since=killed_at[0]) == ONLINE:
                back_at.append(time.time())

    poller = threading.Thread(target=watch_back, daemon=True)
    poller.start()
    cfg = _config(root)
    keys = dict(local.node_keys)  # type: ignore[attr-defined]
    watcher = orch.watcher(placements, interval_s=5.0)
    try:
        with watcher:
            result = start_training(superlink=local.link.address,  # type: ignore[attr-defined]
                                    ca_cert=local.certs.ca.cert,  # type: ignore[attr-defined]
                                    node_keys=keys, run_config=cfg, state_dir=root / "state",
                                    cli=local.cli, on_line=on_line,  # type: ignore[attr-defined]
                                    timeout_s=run_bound_s(cfg))
    finally:
        stop.set()
        poller.join()
        orch.stop(watcher.placements)
    assert killed_at, "round 2 never started"
    assert result.status == "COMPLETED", result.detail
    assert back_at, "the killed participant's node never came back online"
    rejoin_s = back_at[0] - killed_at[0]
    print(f"\nkill -> online again: {rejoin_s:.1f} s (bound {LOST_NODE_BOUND_S:g} s); "
          f"watcher events: {[(e.participant, e.kind, e.reason) for e in watcher.events]}")
    assert rejoin_s <= LOST_NODE_BOUND_S
    by_round = {r["round"]: r["contributors"] for r in result.rounds}
    print(f"contributors per round: {by_round}")
    assert sorted(by_round) == [1, 2, 3]
    assert sorted(by_round[1]) == sorted(NAMES)
    # The killed participant contributes again after the kill (round 2 topped up, or round 3).
    assert VICTIM in by_round[3]
    from fedcloud.federation import training_output

    out = training_output(result)
    print(f"training output: degraded={out['degraded']} detail={out['detail']!r} "
          f"dropped={out['droppedParticipants']}")
    assert out["contributors"] == {str(k): v for k, v in sorted(by_round.items())}
    if VICTIM not in by_round[2]:
        assert out["degraded"] is True and VICTIM in out["droppedParticipants"]
