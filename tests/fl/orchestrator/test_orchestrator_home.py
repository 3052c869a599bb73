"""A VM without ``workDir``, as in every cloud stack: the work dir is relative to the SSH home.

A real sshd (an emulated VM on 127.0.1.91) whose sessions start in the user's home, the default
work dir (``fedcloud``, relative), and a TLS SuperLink with node authentication on 127.0.1.252.
The SuperNode must come online: its CA, node key and ``FLWR_HOME`` are found although the
supervisor has changed into the participant's directory before ``launch.sh`` runs.
"""

from __future__ import annotations

import os
import pwd
import shutil
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import pytest

from fedcloud.core.participants import Location, Participant
from fedcloud.core.stack import OrchestratorSettings
from fedcloud.local.emulated import EmulatedCloud, VmRequest
from fedcloud.local.localfed import start_local_superlink
from fl.initializer.training import CONNECTION
from fl.orchestrator import NodeLaunch, Orchestrator, SuperLinkNodes
from fl.orchestrator.scripts import DEFAULT_WORK_DIR, KEY_FILE, LAUNCH_FILE
from fl.orchestrator.ssh import ParamikoTransport

pytestmark = pytest.mark.slow

LINK_HOST = "127.0.1.252"
FIRST_HOST = 91
# Its own name per run: the participant's directory lands in the real home of the SSH user.
NAME = f"home-{os.getpid()}"


@pytest.fixture
def home_work(tmp_path: Path) -> Iterator[Path]:
    """``<home>/fedcloud/fedcloud-<NAME>`` of the emulated VM's user, removed afterwards."""
    home = Path(os.path.realpath(pwd.getpwnam("root").pw_dir))
    work = home / DEFAULT_WORK_DIR
    existed = work.exists()
    target = work / f"fedcloud-{NAME}"
    try:
        yield target
    finally:
        shutil.rmtree(target, ignore_errors=True)
        if not existed and work.exists() and not any(work.iterdir()):
            work.rmdir()


def test_default_work_dir_resolves_against_the_ssh_home(tmp_path: Path, home_work: Path) -> None:
    local = start_local_superlink(tmp_path, [NAME], link_host=LINK_HOST)
    try:
        with EmulatedCloud(tmp_path / "vms", first_host=FIRST_HOST) as cloud:
            (spec,) = cloud.start([VmRequest("vm-001", "Active", 4, 8, 40)])
            vm = replace(spec, work_dir=None)  # no workDir in the inventory
            participant = Participant(NAME, Location(region="aws:us-east-1"), None, None, (vm,))
            launch = NodeLaunch(local.link.address, local.certs.ca.cert,
                                local.certs.nodes[NAME].private_key,
                                data_dir=str(tmp_path / "data"), max_wait_time_s=30)
            settings = OrchestratorSettings(min_vcpus=2, min_memory_gb=4, min_disk_gb=20,
                                            min_free_disk_gb=1, max_attempts=1, backoff_s=0,
                                            online_timeout_s=60, host_key_policy="reject")
            orch = Orchestrator([participant], {NAME: launch}, transport=ParamikoTransport(),
                                nodes=SuperLinkNodes(local.cli, CONNECTION, local.node_ids),
                                settings=settings, state_dir=tmp_path / "state",
                                restart_delay_s=2.0)
            result = orch.dispatch()
            try:
                res = result[NAME]
                assert res.ok, res.summary()
                assert res.placement is not None
                assert res.placement.remote_dir == str(home_work)
                script = (home_work / LAUNCH_FILE).read_text()
                assert f"--root-certificates {home_work}/ca.pem" in script
                assert f"--auth-supernode-private-key {home_work}/{KEY_FILE}" in script
                assert f"FLWR_HOME={home_work}/flwr-home" in script
                assert (home_work / "flwr-home").is_dir()  # the node's own home, not nested
            finally:
                stopped = orch.stop(result.placements())
            assert stopped == {NAME: None}
            assert not (home_work / KEY_FILE).exists()
    finally:
        local.link.stop()
