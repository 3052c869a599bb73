"""Fast tests of the orchestrator's filter, queue, retry and watcher against a scripted double."""

from __future__ import annotations

import json
import os
import time
from dataclasses import replace
from pathlib import Path

import pytest
from orchestrator_fakes import (
    FakeNodes,
    FakeSession,
    ScriptedTransport,
    VmScript,
    fake_participant,
    launch,
    settings,
)

from fedcloud.core.config import from_mapping
from fedcloud.core.errors import ConfigError, OrchestratorError
from fedcloud.core.participants import VmSpec
from fedcloud.core.stack import parse
from fl.orchestrator import Orchestrator
from fl.orchestrator.eligibility import ineligible_reason
from fl.orchestrator.orchestrator import ONLINE_POLL_CAP_S, backoff_delay
from fl.orchestrator.probe import ProbeResult, flwr_compatible, major_minor, parse_probe, probe_all
from fl.orchestrator.rotation import QueueStore, rotation
from fl.orchestrator.scripts import KEY_FILE, launch_script
from fl.orchestrator.ssh import remote_command

# -- filter ------------------------------------------------------------------------------------

VM = VmSpec(id="vm", host="10.0.0.1", port=22, user="u", key_path=None,
            host_key_fingerprint=None, state="Active", vcpus=4, memory_gb=8, disk_gb=40)
LIVE = ProbeResult("vm", True, vcpus=4, memory_gb=7.8, disk_free_gb=30,
                   python="3.11.2", flwr="1.41.0")


@pytest.mark.parametrize(("vm", "probe", "expected"), [
    (VM, LIVE, None),                                                 # healthy
    (replace(VM, state="Inactive"), LIVE, "state is Inactive"),       # reported inactive
    (replace(VM, vcpus=1), LIVE, "declares 1 vCPU"),                  # declared too few CPUs
    (replace(VM, memory_gb=2), LIVE, "declares 2 GB RAM"),            # declared too little RAM
    (replace(VM, disk_gb=10), LIVE, "declares 10 GB disk"),           # declared too small disk
    (replace(VM, vcpus=None, memory_gb=None, disk_gb=None), LIVE, None),  # unknown: live decides
    (VM, None, "not probed"),                                         # no live figures
    (VM, ProbeResult("vm", False, error="refused"), "unreachable: refused"),
    (VM, replace(LIVE, vcpus=1), "has 1 vCPU live"),                  # live CPUs too few
    (VM, replace(LIVE, memory_gb=3.7), None),                         # kernel-reserved RAM is ok
    (VM, replace(LIVE, memory_gb=3.5), "GB RAM live"),                # live RAM too little
    (VM, replace(LIVE, disk_free_gb=1), "free in its work dir"),      # work dir full
    (VM, replace(LIVE, flwr=""), "no flwr"),                          # flwr not installed
    (VM, replace(LIVE, flwr="1.40.2"), "major.minor must match"),     # version skew
    (VM, replace(LIVE, flwr="1.41.7"), None),                         # patch level may differ
])
def test_ineligible_reason(vm: VmSpec, probe: ProbeResult | None, expected: str | None) -> None:
    reason = ineligible_reason(vm, probe, settings(), "1.41.0")
    if expected is None:
        assert reason is None
    else:
        assert reason is not None and expected in reason


@pytest.mark.parametrize(("version", "expected"), [
    ("1.41.0", (1, 41)), ("1.41", (1, 41)), ("2.0rc1", (2, 0)), ("1", None), ("abc", None),
])
def test_major_minor(version: str, expected: tuple[int, int] | None) -> None:
    assert major_minor(version) == expected


@pytest.mark.parametrize(("vm_version", "link", "ok"), [
    ("1.41.0", "1.41.3", True), ("1.40.0", "1.41.0", False), ("", "1.41.0", False),
    (None, "1.41.0", False),
])
def test_flwr_compatible(vm_version: str | None, link: str, ok: bool) -> None:
    assert flwr_compatible(vm_version, link) is ok


@pytest.mark.parametrize(("stdout", "vcpus", "memory_gb", "flwr"), [
    # No address-space limit: MemTotal counts.
    ("vcpus=2\nmem_kb=8388608\nas_bytes=unlimited\ndisk_kb=1048576\nflwr=1.41.0\n", 2, 8.0,
     "1.41.0"),
    # A limit below MemTotal (a cgroup/ulimit-restricted VM) wins.
    ("vcpus=1\nmem_kb=8388608\nas_bytes=268435456\ndisk_kb=1048576\nflwr=\n", 1, 0.25, ""),
    # A limit above MemTotal changes nothing.
    ("vcpus=1\nmem_kb=4194304\nas_bytes=17179869184\nflwr=\n", 1, 4.0, ""),
    # Garbage lines are ignored; missing figures stay unknown.
    ("noise\nvcpus=x\n", None, None, None),
])
def test_parse_probe(stdout: str, vcpus: int | None, memory_gb: float | None,
                     flwr: str | None) -> None:
    res = parse_probe("vm", stdout)
    assert (res.vcpus, res.memory_gb, res.flwr) == (vcpus, memory_gb, flwr)


# -- queue and back-off ------------------------------------------------------------------------

INV = ["vm-001", "vm-002", "vm-003", "vm-004", "vm-005"]


@pytest.mark.parametrize(("eligible", "last", "expected"), [
    (["vm-001", "vm-002"], None, ["vm-001", "vm-002"]),              # first task
    (["vm-001", "vm-002"], "vm-001", ["vm-002", "vm-001"]),          # next one in the circle
    (["vm-001", "vm-002"], "vm-002", ["vm-001", "vm-002"]),          # wraps around
    (["vm-001", "vm-005"], "vm-003", ["vm-005", "vm-001"]),          # last left the circle
    (["vm-002"], "gone-vm", ["vm-002"]),                             # unknown last: from start
    ([], "vm-001", []),                                              # nothing eligible
])
def test_rotation(eligible: list[str], last: str | None, expected: list[str]) -> None:
    assert rotation(INV, eligible, last) == expected


@pytest.mark.parametrize(("attempt", "base", "expected"), [
    (1, 1.0, 0.0), (2, 1.0, 1.0), (3, 1.0, 2.0), (5, 1.0, 8.0), (10, 1.0, 30.0), (3, 0.0, 0.0),
])
def test_backoff_delay(attempt: int, base: float, expected: float) -> None:
    assert backoff_delay(attempt, base) == expected


def test_queue_round_trip_and_corrupt_file(tmp_path: Path) -> None:
    store = QueueStore(tmp_path)
    assert store.last("us") is None
    store.record("us", ["vm-001", "vm-002"], "vm-002")
    assert store.last("us") == "vm-002"
    assert json.loads(store.path("us").read_text())["circle"] == ["vm-001", "vm-002"]
    store.path("us").write_text("{not json")
    with pytest.raises(OrchestratorError, match=r"queue-us\.json: unreadable.*To fix: delete"):
        store.last("us")


def test_queue_failed_write_keeps_previous_state(tmp_path: Path,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    store = QueueStore(tmp_path)
    store.record("us", ["vm-001", "vm-002"], "vm-001")

    def broken_replace(src: str, dst: str) -> None:
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", broken_replace)
    with pytest.raises(OSError, match="disk full"):
        store.record("us", ["vm-001", "vm-002"], "vm-002")
    monkeypatch.undo()
    assert store.last("us") == "vm-001"
    assert [p.name for p in store.dir.iterdir()] == ["queue-us.json"]  # no temp file left


# -- settings ----------------------------------------------------------------------------------

# the smallest valid stack besides the section under test
LIMITS = {"limits": {"maxCost": 100, "maxLatencyMs": 300},
          "participants": [{"name": "p", "location": {"region": "aws:us-east-1"}}]}


def test_settings_defaults_come_from_pulumi_yaml() -> None:
    got = parse(from_mapping("t", "test", LIMITS)).orchestrator
    assert (got.min_vcpus, got.min_memory_gb, got.min_disk_gb) == (2, 4, 20)
    assert got.host_key_policy == "reject"


@pytest.mark.parametrize(("change", "match"), [
    ({"hostKeyPolicy": "trust"}, r"orchestrator\.hostKeyPolicy is 'trust'"),
    ({"maxAttempts": 0}, r"orchestrator\.maxAttempts must be >= 1"),
    ({"minVcpu": 2}, r"did you mean 'minVcpus'"),
])
def test_settings_errors(change: dict[str, object], match: str) -> None:
    section: dict[str, object] = {
        "minVcpus": 2, "minMemoryGb": 4, "minDiskGb": 20, "minFreeDiskGb": 2, "maxAttempts": 5,
        "backoffS": 1.0, "onlineTimeoutS": 60, "hostKeyPolicy": "reject"}
    section.update(change)
    if "minVcpu" in change:
        section.pop("minVcpus")
    with pytest.raises(ConfigError, match=match):
        parse(from_mapping("t", "test", {**LIMITS, "orchestrator": section}))


# -- dispatch against the scripted double ------------------------------------------------------


def _orch(tmp_path: Path, scripts: dict[str, VmScript], names: tuple[str, ...] = ("us",),
          sleeps: list[float] | None = None, work_dir: str | None = "/srv/fed work",
          **changes: object) -> tuple[Orchestrator, ScriptedTransport]:
    parts = [fake_participant(n, i, work_dir) for i, n in enumerate(names, start=1)]
    full: dict[str, VmScript] = {}
    for p in parts:
        for vm in p.vms:
            key = f"{vm.host}:{vm.port}"
            default = VmScript(connect_error="connect") if vm.state != "Active" else VmScript()
            full[key] = scripts.get(f"{p.name}/{vm.id}", default)
    transport = ScriptedTransport(full)
    record = sleeps if sleeps is not None else []
    orch = Orchestrator(parts, {n: launch(tmp_path, n) for n in names}, transport=transport,
                        nodes=FakeNodes(transport), settings=settings(**changes),
                        state_dir=tmp_path / "state", superlink_flwr="1.41.0",
                        sleep=record.append)
    return orch, transport


BROKEN = VmScript(start="exit")
SILENT = VmScript(start="silent")
# Probed fine, then refused at the start (the key was rotated, the host re-installed).
NO_AUTH = VmScript(connect_error="auth", error_from_connect=2)
BAD_KEY = VmScript(connect_error="hostkey", error_from_connect=2)
DOWN = VmScript(connect_error="connect")


@pytest.mark.parametrize(("scripts", "attempts", "vm"), [
    # Healthy: the first VM of the circle.
    ({}, [("vm-001", "online")], "vm-001"),
    # Start command fails on vm-001: retried on vm-002.
    ({"us/vm-001": BROKEN}, [("vm-001", "start"), ("vm-002", "online")], "vm-002"),
    # Started but never online: times out, then vm-002.
    ({"us/vm-001": SILENT}, [("vm-001", "online"), ("vm-002", "online")], "vm-002"),
    # A stale session holds the node id: tolerated, the restarted node comes online.
    ({"us/vm-001": VmScript(start="stale", exit_code=1)}, [("vm-001", "online")], "vm-001"),
    # Every start fails: bounded attempts around the circle, no placement.
    ({"us/vm-001": BROKEN, "us/vm-002": BROKEN},
     [("vm-001", "start"), ("vm-002", "start"), ("vm-001", "start"), ("vm-002", "start"),
      ("vm-001", "start")], None),
])
def test_dispatch_retries_on_the_next_vm(tmp_path: Path, scripts: dict[str, VmScript],
                                         attempts: list[tuple[str, str]], vm: str | None) -> None:
    orch, _ = _orch(tmp_path, scripts)
    res = orch.dispatch()["us"]
    assert [(a.vm_id, a.stage) for a in res.attempts] == attempts
    assert res.vm_id == vm
    assert res.ineligible == {"vm-003": "state is Inactive", "vm-004": "state is Inactive",
                              "vm-005": "declares 1 vCPU, below the minimum 2"}


def test_dispatch_failure_reasons_and_backoff(tmp_path: Path) -> None:
    sleeps: list[float] = []
    orch, transport = _orch(tmp_path, {"us/vm-001": BROKEN, "us/vm-002": BROKEN}, sleeps=sleeps,
                            backoff_s=3.0)
    result = orch.dispatch()
    res = result["us"]
    assert not result.ok and list(result.failed) == ["us"]
    assert res.error == "no VM started it in 5 attempts"
    assert "flower-supernode exited with code 70" in res.attempts[0].reason
    assert [s for s in sleeps if s > ONLINE_POLL_CAP_S] == [3.0, 6.0, 12.0, 24.0]
    assert transport.open_sessions == 0  # every session closed
    assert transport.running_on("us") == []  # failed starts were cleaned up
    with pytest.raises(OrchestratorError, match=r"1 of 1 participants.*us: FAILED"):
        result.raise_on_failure()


def test_permanent_failures_are_not_retried(tmp_path: Path) -> None:
    orch, transport = _orch(tmp_path, {"us/vm-001": BAD_KEY, "us/vm-002": NO_AUTH})
    res = orch.dispatch()["us"]
    assert [(a.vm_id, a.stage) for a in res.attempts] == [("vm-001", "hostkey"),
                                                           ("vm-002", "auth")]
    assert not res.ok
    # Probe (1) + start (1) per VM: neither was tried twice.
    assert transport.vms["10.1.0.1:22"].connects == 2


def test_unreachable_vm_is_filtered_by_the_probe(tmp_path: Path) -> None:
    orch, _ = _orch(tmp_path, {"us/vm-001": DOWN})
    res = orch.dispatch()["us"]
    assert res.vm_id == "vm-002"
    assert res.ineligible["vm-001"].startswith("unreachable: VM vm-001: scripted connect")
    assert [a.vm_id for a in res.attempts] == ["vm-002"]


def test_round_robin_persists_across_runs(tmp_path: Path) -> None:
    chosen = []
    for _ in range(3):  # a new Orchestrator each time: the position comes from the state dir
        orch, _ = _orch(tmp_path, {})
        res = orch.dispatch()["us"]
        chosen.append(res.vm_id)
        assert res.placement is not None
        assert orch.stop({"us": res.placement}) == {"us": None}
    assert chosen == ["vm-001", "vm-002", "vm-001"]


def test_one_participant_failing_does_not_stop_the_others(tmp_path: Path) -> None:
    scripts = {"eu/vm-001": BROKEN, "eu/vm-002": BROKEN}
    orch, _ = _orch(tmp_path, scripts, names=("us", "asia", "eu"), max_attempts=2)
    result = orch.dispatch()
    assert sorted(result.succeeded) == ["asia", "us"]
    assert list(result.failed) == ["eu"]
    assert set(result.placements()) == {"asia", "us"}


def test_start_uploads_secrets_private_and_quotes_commands(tmp_path: Path) -> None:
    orch, transport = _orch(tmp_path, {})
    res = orch.dispatch()["us"]
    st = transport.vms["10.1.0.1:22"]
    base = "/srv/fed work/fedcloud-us"
    assert st.uploads[f"{base}/{KEY_FILE}"] == (b"PRIVATE KEY OF us\n", 0o600)
    assert st.uploads[f"{base}/ca.pem"][1] == 0o644
    script = st.uploads[f"{base}/launch.sh"][0].decode()
    assert "FLWR_TELEMETRY_ENABLED=0" in script and "FLWR_DISABLE_UPDATE_CHECK=1" in script
    assert "--max-wait-time" in script and "--auth-supernode-private-key" in script
    assert "'/srv/fed work/fedcloud-us/node.key'" in script  # quoted path with a space
    start = next(c for c in st.commands if "setsid" in c)
    assert "cd '/srv/fed work/fedcloud-us'" in start
    assert res.placement is not None and res.placement.runtime_port == 40001
    errors = orch.stop({"us": res.placement})
    assert errors == {"us": None}
    assert "rm -f node.key" in st.commands[-1]


def test_default_work_dir_is_resolved_before_any_path_is_used(tmp_path: Path) -> None:
    # No workDir (as in every cloud stack): "fedcloud" under the SSH user's home. The prepare
    # command prints the absolute directory; uploads and the launch script use only that.
    orch, transport = _orch(tmp_path, {}, work_dir=None)
    res = orch.dispatch()["us"]
    st = transport.vms["10.1.0.1:22"]
    base = "/home/fedcloud/fedcloud/fedcloud-us"
    prepare = next(c for c in st.commands if "socket.socket()" in c)
    assert "mkdir -p fedcloud/fedcloud-us" in prepare and 'echo "dir=$(pwd -P)"' in prepare
    assert sorted(st.uploads) == [f"{base}/{name}" for name in
                                  ("ca.pem", "flwr-clientapp", "launch.sh", "node.key",
                                   "supervise.sh", "warm-starter.py")]
    script = st.uploads[f"{base}/launch.sh"][0].decode()
    assert f"--root-certificates {base}/ca.pem" in script
    assert f"--auth-supernode-private-key {base}/node.key" in script
    assert f"FLWR_HOME={base}/flwr-home" in script
    # The warm starter runs from the node's directory, which goes first on the PATH.
    assert f"{base}/warm-starter.py" in script and f"PATH={base}:" in script
    assert st.uploads[f"{base}/flwr-clientapp"][0].startswith(b"#!/opt/venv/bin/python -S\n")
    assert "fedcloud/fedcloud-us/" not in script.replace(base, "")  # no relative path left
    assert res.placement is not None and res.placement.remote_dir == base
    assert orch.stop({"us": res.placement}) == {"us": None}
    assert f"cd {base} " in st.commands[-1]


def test_prepare_without_an_absolute_dir_fails_the_start(tmp_path: Path,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    orch, transport = _orch(tmp_path, {}, max_attempts=1)
    monkeypatch.setattr(FakeSession, "_absolute", lambda self, name: f"fedcloud-{name}")
    res = orch.dispatch()["us"]
    assert [(a.vm_id, a.stage) for a in res.attempts] == [("vm-001", "prepare")]
    assert "cannot prepare /srv/fed work/fedcloud-us" in res.attempts[0].reason
    assert transport.vms["10.1.0.1:22"].uploads == {}  # nothing uploaded to a relative path


def test_launch_script_refuses_a_relative_directory(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="absolute directory, got 'fedcloud/fedcloud-us'"):
        launch_script("fedcloud/fedcloud-us", launch(tmp_path, "us"), "us", 40001, None)


def test_remote_command_quotes_every_word() -> None:
    cmd = remote_command(["echo", "a b", "$(reboot)"], env={"K": "v w"}, cwd="/x y")
    assert cmd == "cd '/x y' && env 'K=v w' echo 'a b' '$(reboot)'"


def test_probe_all_does_not_wait_for_a_hanging_vm(tmp_path: Path) -> None:
    orch, _ = _orch(tmp_path, {"us/vm-001": VmScript(connect_delay_s=3.0)})
    vms = {vm.id: vm for vm in orch.participants["us"].vms if vm.state == "Active"}
    start = time.monotonic()
    got = probe_all(orch.transport, vms, deadline_s=0.5)
    elapsed = time.monotonic() - start
    assert got["vm-001"].error_kind == "timeout"
    assert got["vm-002"].reachable and got["vm-005"].reachable
    assert elapsed < 2.5  # returned at its deadline, not after the 3 s hang


# -- watcher -----------------------------------------------------------------------------------


@pytest.mark.parametrize(("loss", "reason"), [
    ("supervisor", "supervisor not running"),   # the process tree is gone
    ("vm", "VM unreachable"),                   # the VM went down
])
def test_watcher_redispatches_a_lost_node(tmp_path: Path, loss: str, reason: str) -> None:
    orch, transport = _orch(tmp_path, {})
    first = orch.dispatch()["us"]
    assert first.placement is not None and first.vm_id == "vm-001"
    st = transport.vms["10.1.0.1:22"]
    if loss == "supervisor":
        st.running.clear()
    else:
        st.script = VmScript(connect_error="connect")
    events: list[object] = []
    watcher = orch.watcher({"us": first.placement}, on_event=events.append)
    got = watcher.check_once()
    assert len(got) == 1 and got[0].lost_vm == "vm-001" and reason in got[0].reason
    assert got[0].result.vm_id == "vm-002"
    assert watcher.placements["us"].vm.id == "vm-002"
    assert events == got
    # The same node key moved along.
    key = transport.vms["10.1.0.2:22"].uploads["/srv/fed work/fedcloud-us/node.key"]
    assert key == (b"PRIVATE KEY OF us\n", 0o600)
    assert watcher.check_once() == []  # healthy now: nothing to do


def test_watcher_leaves_a_healthy_node_alone(tmp_path: Path) -> None:
    orch, transport = _orch(tmp_path, {})
    first = orch.dispatch()["us"]
    assert first.placement is not None
    watcher = orch.watcher({"us": first.placement})
    assert watcher.check_once() == []
    assert transport.running_on("us") == ["10.1.0.1:22"]
