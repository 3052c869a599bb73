"""Real SSH against OpenSSH's sshd: emulated VMs on 127.0.1.x (fedcloud/local/emulated.py).

Host-key pinning (wrong key refused, no pin refused unless trust-on-first-use), key auth, 0600
uploads, quoting, live probes of declared limits, and VM crash cleanup.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import pytest

from fedcloud.local.emulated import EmulatedCloud, _pids_with_marker, brief_vms, key_fingerprint
from fl.orchestrator.probe import probe_all
from fl.orchestrator.ssh import ParamikoTransport, SshError, remote_command

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def cloud(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EmulatedCloud]:
    with EmulatedCloud(tmp_path_factory.mktemp("vms"), first_host=21) as cloud:
        cloud.start(brief_vms())
        yield cloud


def test_pinned_host_key_connects_and_matches_ssh_keygen(cloud: EmulatedCloud) -> None:
    vm = cloud.vm("vm-001")
    assert vm.spec.host == "127.0.1.21" and vm.spec.user == "root"
    assert vm.spec.host_key_fingerprint == key_fingerprint(vm.root / "ssh_host_ed25519_key.pub")
    with ParamikoTransport().connect(vm.spec) as session:
        res = session.run("echo $((6 * 7)); echo oops >&2; exit 3")
    assert (res.exit_code, res.stdout, res.stderr) == (3, "42\n", "oops\n")


def test_wrong_host_key_is_refused(cloud: EmulatedCloud) -> None:
    other = cloud.vm("vm-002").spec.host_key_fingerprint
    spec = replace(cloud.vm("vm-001").spec, host_key_fingerprint=other)
    with pytest.raises(SshError, match=r"refusing VM vm-001: host key .* but the inventory pins") \
            as err:
        ParamikoTransport().connect(spec)
    assert err.value.kind == "hostkey"


def test_unpinned_host_is_refused_unless_tofu(cloud: EmulatedCloud,
                                              caplog: pytest.LogCaptureFixture) -> None:
    spec = replace(cloud.vm("vm-001").spec, host_key_fingerprint=None)
    with pytest.raises(SshError, match="has no pinned host key"):
        ParamikoTransport().connect(spec)
    with caplog.at_level(logging.WARNING, logger="fl.orchestrator.ssh"), \
            ParamikoTransport("tofu").connect(spec) as session:
        assert session.run("true").ok
    pinned = cloud.vm("vm-001").spec.host_key_fingerprint
    assert any(f"accepting ssh-ed25519 key {pinned}" in r.getMessage() for r in caplog.records)


def test_tofu_refuses_a_key_that_changes_after_first_use(cloud: EmulatedCloud) -> None:
    first, second = cloud.vm("vm-001").spec, cloud.vm("vm-002").spec
    transport = ParamikoTransport("tofu")
    with transport.connect(replace(first, host_key_fingerprint=None)) as session:
        assert session.run("true").ok
    assert transport.learned[f"{first.host}:{first.port}"] == first.host_key_fingerprint
    # The address was first seen with another key (the host was replaced since): refused.
    transport.learned[f"{second.host}:{second.port}"] = str(first.host_key_fingerprint)
    with pytest.raises(SshError, match=r"changed from SHA256:\S+, accepted on first use") as err:
        transport.connect(replace(second, host_key_fingerprint=None))
    assert err.value.kind == "hostkey"


def test_wrong_user_key_fails_auth(cloud: EmulatedCloud, tmp_path: Path) -> None:
    stranger = tmp_path / "stranger"
    os.system(f"ssh-keygen -q -t ed25519 -N '' -f {stranger}")
    spec = replace(cloud.vm("vm-001").spec, key_path=stranger)
    with pytest.raises(SshError, match="authentication as root failed") as err:
        ParamikoTransport().connect(spec)
    assert err.value.kind == "auth"


def test_inactive_vm_is_unreachable_fast(cloud: EmulatedCloud) -> None:
    start = time.monotonic()
    with pytest.raises(SshError, match=r"VM vm-003 \(127\.0\.1\.23:\d+\) unreachable") as err:
        ParamikoTransport().connect(cloud.vm("vm-003").spec)
    assert err.value.kind == "connect"
    assert time.monotonic() - start < 5.0


def test_upload_is_private_and_commands_are_quoted(cloud: EmulatedCloud) -> None:
    spec = cloud.vm("vm-002").spec
    work = Path(str(spec.work_dir))
    odd = f"{work}/a b;touch pwned;$(touch pwned)"
    with ParamikoTransport().connect(spec) as session:
        session.put(b"secret\n", f"{work}/node.key", 0o600)
        res = session.run(remote_command(["cat", f"{work}/node.key"]))
        session.run(remote_command(["touch", odd]))
    assert res.stdout == "secret\n"
    assert (work / "node.key").stat().st_mode & 0o777 == 0o600
    assert Path(odd).exists()
    assert not (work / "pwned").exists() and not (Path.home() / "pwned").exists()
    assert not [p for p in work.iterdir() if p.name.endswith(".tmp")]


def test_probe_reads_the_enforced_limits(cloud: EmulatedCloud) -> None:
    got = probe_all(ParamikoTransport(), cloud.inventory())
    cpus = len(os.sched_getaffinity(0))
    big, small = got["vm-001"], got["vm-005"]
    assert big.reachable and big.vcpus == min(4, cpus) and big.memory_gb == pytest.approx(8.0)
    assert big.flwr is not None and big.flwr.startswith("1.41.")
    assert big.python is not None and big.python.startswith("3.11.")
    assert big.disk_free_gb is not None and big.disk_free_gb > 0
    assert small.vcpus == 1 and small.memory_gb == pytest.approx(0.25)
    assert not got["vm-003"].reachable and got["vm-003"].error_kind == "connect"
    assert not got["vm-004"].reachable


def test_crash_leaves_no_process_behind(tmp_path: Path) -> None:
    with EmulatedCloud(tmp_path / "vms", first_host=29) as cloud:
        (spec,) = cloud.start(brief_vms()[:1])
        with ParamikoTransport().connect(spec) as session:
            session.run("setsid sleep 300 </dev/null >/dev/null 2>&1 &")
        token = cloud.vm(spec.id).token
        sshd = cloud.vm(spec.id).pid
        assert sshd is not None and len(_pids_with_marker(token)) >= 1
        cloud.crash(spec.id)
        assert _pids_with_marker(token) == []
        assert not Path(f"/proc/{sshd}").exists() or "Z" in Path(
            f"/proc/{sshd}/status").read_text().split("State:")[1][:4]
        with pytest.raises(SshError, match="unreachable"):
            ParamikoTransport().connect(spec)
