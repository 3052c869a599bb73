"""The stack's marker reaches every SSH session of an emulated VM, whatever the state path holds.

Slow: a real sshd; the session's environment is read with the OpenSSH client.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from fedcloud.local.emulated import EmulatedCloud, VmRequest
from fedcloud.local.state import MARKER_ENV, marker_pids

pytestmark = pytest.mark.slow


def test_marker_is_in_every_session_and_the_sshd_is_found_by_it(tmp_path: Path) -> None:
    state = tmp_path / "state"
    value = f'{state}/we ird "q" \\b #x $HOME %h'  # quotes, a backslash, a comment sign, tokens
    with EmulatedCloud(state / "vms" / "p1", first_host=93,
                       marker_env={MARKER_ENV: value}) as cloud:
        (spec,) = cloud.start([VmRequest("vm-001", "Active")])
        env = subprocess.run(
            ["ssh", "-o", "StrictHostKeyChecking=no", "-o", "UserKnownHostsFile=/dev/null",
             "-o", "BatchMode=yes", "-i", str(spec.key_path), "-p", str(spec.port),
             f"root@{spec.host}", "env"], capture_output=True, text=True, timeout=60,
            check=True).stdout.splitlines()
        assert f"{MARKER_ENV}={value}" in env
        sshd = cloud.vm("vm-001").pid
        assert sshd in marker_pids(state)  # by its config under the state directory
    assert sshd not in marker_pids(state)


def test_a_vm_under_a_path_with_spaces_quotes_and_percent_signs_starts(tmp_path: Path) -> None:
    from fl.orchestrator.ssh import ParamikoTransport

    root = tmp_path / 'vms "a" 100% \\ b'
    with EmulatedCloud(root, first_host=94) as cloud:
        (spec,) = cloud.start([VmRequest("vm-001", "Active")])
        with ParamikoTransport().connect(spec) as session:  # host key pinned, as in a dispatch
            assert session.run("echo up").stdout.strip() == "up"
