"""The orchestrator for real: emulated VMs behind OpenSSH's sshd, a TLS SuperLink with node auth.

Two participants, each with the reference five VMs (127.0.1.41-45 and .51-55): vm-003/vm-004
Inactive (no sshd), vm-005 below the minimum spec (and really too small: 0.25 GB address space),
vm-001/vm-002 healthy. The SuperLink runs on 127.0.1.254 with the deployment's TLS certificate.

The tests share one federation and run in file order; the VM crash runs last.
"""

from __future__ import annotations

import datetime as dt
import os
import signal
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from fedcloud.core.control import ControlApi
from fedcloud.core.errors import TrainingError
from fedcloud.core.participants import Location, Participant
from fedcloud.core.stack import OrchestratorSettings
from fedcloud.local.emulated import EmulatedCloud, brief_vms
from fedcloud.local.localfed import start_local_superlink
from fl.initializer.certs import ensure_deployment_certs, make_node_key
from fl.initializer.flwr_cli import FlwrCli
from fl.initializer.superlink import SuperLinkProcess
from fl.initializer.training import CONNECTION, register_nodes
from fl.orchestrator import NodeLaunch, Orchestrator, SuperLinkNodes
from fl.orchestrator.results import StartFailed
from fl.orchestrator.rotation import rotation
from fl.orchestrator.scripts import KEY_FILE, SUPERNODE_PID
from fl.orchestrator.ssh import ParamikoTransport
from fl.orchestrator.supernode import SUPEREXEC_TASK_POLL_ENV, SUPEREXEC_TASK_POLL_S

pytestmark = pytest.mark.slow

LINK_HOST = "127.0.1.254"
NAMES = ("us", "eu")
FIRST_HOST = {"us": 41, "eu": 51}
RESTART_DELAY_S = 2.0
BACK_ONLINE_S = 60.0


@dataclass
class Fed:
    root: Path
    link: SuperLinkProcess
    cli: FlwrCli
    clouds: dict[str, EmulatedCloud]
    node_ids: dict[str, int]
    nodes: SuperLinkNodes
    orch: Orchestrator


@pytest.fixture(scope="module")
def fed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Fed]:
    root = tmp_path_factory.mktemp("orch")
    clouds = {n: EmulatedCloud(root / f"vms-{n}", first_host=FIRST_HOST[n]) for n in NAMES}
    local = start_local_superlink(root, NAMES, link_host=LINK_HOST)
    link, certs, cli, node_ids = local.link, local.certs, local.cli, local.node_ids
    try:
        participants = [Participant(n, Location(region="aws:us-east-1"), None, None,
                                    clouds[n].start(brief_vms())) for n in NAMES]
        launches = {n: NodeLaunch(link.address, certs.ca.cert, certs.nodes[n].private_key,
                                  data_dir=str(root / "data" / n), max_wait_time_s=30)
                    for n in NAMES}
        settings = OrchestratorSettings(min_vcpus=2, min_memory_gb=4, min_disk_gb=20,
                                        min_free_disk_gb=1, max_attempts=4, backoff_s=0.5,
                                        online_timeout_s=45, host_key_policy="reject")
        nodes = SuperLinkNodes(cli, CONNECTION, node_ids)
        orch = Orchestrator(participants, launches, transport=ParamikoTransport(), nodes=nodes,
                            settings=settings, state_dir=root / "state",
                            restart_delay_s=RESTART_DELAY_S)
        yield Fed(root, link, cli, clouds, node_ids, nodes, orch)
    finally:
        for cloud in clouds.values():
            cloud.stop()
        link.stop()


def _online_ids(fed: Fed) -> set[int]:
    return {n.node_id for n in fed.cli.list_nodes(CONNECTION) if n.online}


def _wait(predicate: object, timeout_s: float) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if predicate():  # type: ignore[operator]
            return True
        time.sleep(1.0)
    return False


def _environ(pid: int) -> dict[str, str]:
    raw = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
    return dict(item.decode().partition("=")[::2] for item in raw if item)


def _superexec_of(supernode_pid: int) -> int | None:
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit():
            try:
                argv = (proc / "cmdline").read_bytes().split(b"\0")
            except OSError:
                continue
            if (any(a.endswith(b"flower-superexec") for a in argv)
                    and str(supernode_pid).encode() in argv):
                return int(proc.name)
    return None


def test_node_keys_are_registered_over_the_control_api_without_the_cli(fed: Fed) -> None:
    # A `flwr` that cannot start proves no CLI runs: the request goes from this process.
    cli = FlwrCli(fed.cli.home, executable="/nonexistent/flwr")
    keys = {n: k.public_key for n, k in
            ensure_deployment_certs(fed.root / "certs", [LINK_HOST], NAMES).nodes.items()}
    with pytest.raises(TrainingError, match="already in use") as err:
        cli.register_node(keys["us"], CONNECTION)
    assert "\n" not in str(err.value).strip()
    # Known keys resolve to the ids recorded when they were first registered.
    assert register_nodes(cli, CONNECTION, fed.link.address, keys) == fed.node_ids
    fresh = make_node_key(fed.root / "extra-key", "extra")
    new_id = cli.register_node(fresh.public_key, CONNECTION)
    assert new_id not in fed.node_ids.values()
    assert new_id in {n.node_id for n in fed.cli.list_nodes(CONNECTION)}
    bad = fed.root / "extra-key" / "not-a-key.pub"
    for text in ("ssh-ed25519 AAAA this is not a key", "ssh-unknown-type AAAAB3NzaC1yc2E x"):
        bad.write_text(text + "\n", encoding="ascii")
        with pytest.raises(TrainingError,
                           match=r"cannot read the node public key .*not-a-key\.pub"):
            cli.register_node(bad, CONNECTION)


def test_dispatch_shows_every_supernode_online(fed: Fed) -> None:
    # The node list comes from the Control API in this process, not a `flwr` CLI per poll.
    assert isinstance(fed.nodes.lister, ControlApi)
    result = fed.orch.dispatch()
    assert result.ok, [r.summary() for r in result.values()]
    for name in NAMES:
        res = result[name]
        assert res.vm_id == "vm-001"
        assert res.ineligible == {"vm-003": "state is Inactive", "vm-004": "state is Inactive",
                                  "vm-005": "declares 1 vCPU, below the minimum 2"}
    assert set(fed.node_ids.values()) <= _online_ids(fed)
    placement = result["us"].placement
    assert placement is not None
    key = Path(placement.remote_dir) / KEY_FILE
    assert key.stat().st_mode & 0o777 == 0o600
    # The SSH session is closed; the supervisor (its own session) still runs.
    assert os.getsid(placement.supervisor_pid) == placement.supervisor_pid
    # The SuperExec's task poll reaches the remote SuperNode and the SuperExec it starts.
    node_pid = int((Path(placement.remote_dir) / SUPERNODE_PID).read_text())
    poll = f"{SUPEREXEC_TASK_POLL_S:g}"
    assert _environ(node_pid)[SUPEREXEC_TASK_POLL_ENV] == poll
    assert _wait(lambda: _superexec_of(node_pid) is not None, 15)
    superexec = _superexec_of(node_pid)
    assert superexec is not None
    assert _environ(superexec)[SUPEREXEC_TASK_POLL_ENV] == poll
    assert fed.orch.stop(result.placements()) == {"us": None, "eu": None}
    assert not key.exists()
    assert not Path(f"/proc/{placement.supervisor_pid}").exists() or "Z" in Path(
        f"/proc/{placement.supervisor_pid}/status").read_text().split("State:")[1][:4]
    assert _wait(lambda: not (set(fed.node_ids.values()) & _online_ids(fed)), 15)


def test_broken_start_moves_to_the_next_vm(fed: Fed) -> None:
    # The circle's next VM for "us" gets a flower-supernode that fails to start.
    broken, healthy = rotation(["vm-001", "vm-002"], ["vm-001", "vm-002"],
                               fed.orch.queue.last("us"))
    fed.clouds["us"].set_fault_rate(broken, 1.0)
    try:
        result = fed.orch.dispatch(["us"])
    finally:
        fed.clouds["us"].set_fault_rate(broken, 0.0)
        stopped = fed.orch.stop(result.placements())
    res = result["us"]
    assert [(a.vm_id, a.stage, a.ok) for a in res.attempts] == [
        (broken, "start", False), (healthy, "online", True)]
    assert f"emulated fault on {broken}" in res.attempts[0].reason
    # At least once: the supervisor may have retried it before the orchestrator cleaned up.
    assert fed.clouds["us"].faults_injected(broken) >= 1
    assert stopped == {"us": None}


def test_inactive_and_too_small_vms_fail_a_direct_start(fed: Fed) -> None:
    vms = {vm.id: vm for vm in fed.orch.participants["eu"].vms}
    with pytest.raises(StartFailed, match="unreachable") as down:
        fed.orch.start_on(vms["vm-003"], "eu")
    assert down.value.stage == "connect"
    with pytest.raises(StartFailed, match="flower-supernode exited with code") as small:
        fed.orch.start_on(vms["vm-005"], "eu")
    assert small.value.stage == "start"


def _online_since(fed: Fed, name: str) -> float:
    """When the SuperLink last saw the participant's node come online (0 if offline)."""
    for node in fed.cli.list_nodes(CONNECTION):
        if node.node_id == fed.node_ids[name] and node.online:
            return dt.datetime.fromisoformat(node.online_at).timestamp()
    return 0.0


def test_supervisor_restarts_a_dead_supernode(fed: Fed) -> None:
    result = fed.orch.dispatch(["eu"])
    placement = result["eu"].placement
    try:
        assert placement is not None
        work = Path(placement.remote_dir)
        node_pid = int((work / "supernode.pid").read_text())
        killed_at = time.time()
        os.kill(node_pid, signal.SIGTERM)
        assert _wait(lambda: _online_since(fed, "eu") > killed_at, BACK_ONLINE_S)
        assert len((work / "exits").read_text().splitlines()) == 1
        assert int((work / "supernode.pid").read_text()) != node_pid
        assert os.getsid(placement.supervisor_pid) == placement.supervisor_pid  # same supervisor
    finally:
        stopped = fed.orch.stop(result.placements())
    assert stopped == {"eu": None}


def test_watcher_moves_the_node_off_a_crashed_vm(fed: Fed) -> None:
    result = fed.orch.dispatch(["us"])
    lost = result["us"].placement
    assert lost is not None
    fed.clouds["us"].crash(lost.vm.id)  # power off: sshd and the SuperNode die hard
    watcher = fed.orch.watcher(result.placements())
    events = watcher.check_once()
    assert [(e.participant, e.lost_vm) for e in events] == [("us", lost.vm.id)]
    assert "VM unreachable" in events[0].reason
    moved = events[0].result
    assert moved.ok, moved.summary()
    assert moved.vm_id != lost.vm.id
    # Same key, same identity: the registered node id is online again.
    assert fed.node_ids["us"] in _online_ids(fed)
    assert watcher.placements["us"].vm.id == moved.vm_id
    assert fed.orch.stop(watcher.placements) == {"us": None}
