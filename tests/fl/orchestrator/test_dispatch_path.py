"""The dispatch's fast path: the VM-side wait, the SuperExec poll, the in-process node list.

The wait command runs under ``sh`` in a real directory laid out as on a VM; the SuperExec poll
variable is read back from the environment of a started process, for the local start and for
the remote ``launch.sh``; the online wait's pauses are short and grow; the Control API lister is
chosen from the CLI's config.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

import pytest
from orchestrator_fakes import ScriptedTransport, VmScript, fake_participant, launch, settings

from fedcloud.core.control import ControlApi
from fedcloud.core.errors import OrchestratorError
from fl.orchestrator import NodeLaunch, Orchestrator, SuperLinkNodes
from fl.orchestrator.nodes import (
    CONTROL_LIST_MAX_AGE_S,
    NODE_LIST_MAX_AGE_S,
    OFFLINE,
    ONLINE,
    NodeEntry,
)
from fl.orchestrator.orchestrator import ONLINE_POLL_CAP_S, ONLINE_POLL_S
from fl.orchestrator.scripts import (
    EXITS_FILE,
    JOINED_LINE,
    LOG_FILE,
    SUPERVISOR_PID,
    launch_script,
    parse_status,
    prepare_command,
    wait_command,
)
from fl.orchestrator.supernode import (
    SUPEREXEC_TASK_POLL_ENV,
    SUPEREXEC_TASK_POLL_S,
    start_supernode,
    supernode_env,
)

# --- the wait on the VM ----------------------------------------------------------------------


@pytest.fixture
def supervisor(tmp_path: Path) -> Iterator[Path]:
    """A directory laid out as on a VM, with a live 'supervisor' (a sleeping process)."""
    proc = subprocess.Popen(["sleep", "60"])
    (tmp_path / SUPERVISOR_PID).write_text(f"{proc.pid}\n")
    yield tmp_path
    proc.kill()
    proc.wait()


def _wait(directory: Path, window_s: float, exits_seen: int = 0) -> tuple[float, dict[str, str]]:
    start = time.monotonic()
    out = subprocess.run(["sh", "-c", wait_command(str(directory), window_s, exits_seen)],
                         capture_output=True, text=True, check=True, timeout=window_s + 10).stdout
    status = parse_status(out)
    return time.monotonic() - start, {"joined": str(status.joined), "alive":
                                      str(status.supervisor_alive), "exits": str(status.exits)}


def test_wait_returns_as_soon_as_the_node_joined(supervisor: Path) -> None:
    (supervisor / LOG_FILE).write_text("INFO : Starting Flower SuperNode\n")
    elapsed, status = _wait(supervisor, 1.0)
    assert elapsed >= 0.9 and status == {"joined": "False", "alive": "True", "exits": "0"}
    subprocess.Popen(["sh", "-c", f"sleep 0.5; echo 'INFO :  {JOINED_LINE} 42' >> {LOG_FILE}"],
                     cwd=supervisor)
    elapsed, status = _wait(supervisor, 20.0)
    assert elapsed < 5.0 and status == {"joined": "True", "alive": "True", "exits": "0"}


def test_wait_returns_on_an_exit_beyond_the_tolerated(supervisor: Path) -> None:
    (supervisor / EXITS_FILE).write_text("1 1 1700000000\n")
    elapsed, status = _wait(supervisor, 0.5, exits_seen=1)  # one exit tolerated: keeps waiting
    assert elapsed >= 0.4 and status["exits"] == "1"
    elapsed, status = _wait(supervisor, 20.0, exits_seen=0)
    assert elapsed < 5.0 and status["exits"] == "1" and status["joined"] == "False"


def test_wait_returns_when_the_supervisor_is_gone(tmp_path: Path) -> None:
    (tmp_path / SUPERVISOR_PID).write_text("999999999\n")
    elapsed, status = _wait(tmp_path, 20.0)
    assert elapsed < 5.0 and status["alive"] == "False"


def test_prepare_rotates_the_log_so_an_old_join_does_not_count(tmp_path: Path) -> None:
    (tmp_path / LOG_FILE).write_text(f"INFO : {JOINED_LINE} 42\n")
    subprocess.run(["sh", "-c", prepare_command(str(tmp_path), sys.executable)],
                   check=True, capture_output=True)
    assert not (tmp_path / LOG_FILE).exists()
    assert JOINED_LINE in (tmp_path / f"{LOG_FILE}.1").read_text()


# --- the SuperExec poll reaches every SuperNode ----------------------------------------------

_ENV_PROBE = f'#!/bin/sh\necho "poll=${SUPEREXEC_TASK_POLL_ENV}" > "$(dirname "$0")/env.out"\n'


def _fake_supernode(bin_dir: Path) -> Path:
    bin_dir.mkdir(parents=True)
    exe = bin_dir / "flower-supernode"
    exe.write_text(_ENV_PROBE)
    exe.chmod(0o755)
    return exe


def _read_when_written(path: Path) -> str:
    deadline = time.monotonic() + 10
    while not path.exists() or not path.read_text().endswith("\n"):
        assert time.monotonic() < deadline, f"{path} was never written"
        time.sleep(0.02)
    return path.read_text().strip()


def test_the_superexec_poll_is_in_every_supernode_env() -> None:
    assert supernode_env("/h")[SUPEREXEC_TASK_POLL_ENV] == f"{SUPEREXEC_TASK_POLL_S:g}"
    assert 0.01 <= SUPEREXEC_TASK_POLL_S < 1.0  # Flower's range; faster than its 1 s default


def test_a_local_supernode_gets_the_superexec_poll(tmp_path: Path) -> None:
    exe = _fake_supernode(tmp_path / "bin")
    proc = start_supernode(tmp_path / "node", superlink="127.0.0.1:1", data_dir=tmp_path,
                           participant="us", ca_cert=tmp_path / "ca.pem",
                           private_key=tmp_path / "k", runtime_host="127.0.0.1",
                           runtime_port=1, executable=str(exe))
    try:
        assert _read_when_written(tmp_path / "bin" / "env.out") == \
            f"poll={SUPEREXEC_TASK_POLL_S:g}"
    finally:
        proc.stop()


def test_a_remote_supernode_gets_the_superexec_poll(tmp_path: Path) -> None:
    _fake_supernode(tmp_path / "venv" / "bin")
    node = NodeLaunch("127.0.0.1:1", tmp_path / "ca.pem", tmp_path / "k", data_dir="/d")
    script = tmp_path / "launch.sh"
    script.write_text(launch_script(str(tmp_path), node, "us", 1, str(tmp_path / "venv")))
    env = {k: v for k, v in os.environ.items() if k != SUPEREXEC_TASK_POLL_ENV}
    subprocess.run(["sh", str(script)], check=True, env=env, timeout=30)
    assert _read_when_written(tmp_path / "venv" / "bin" / "env.out") == \
        f"poll={SUPEREXEC_TASK_POLL_S:g}"


# --- the online wait: short growing pauses, no fixed sleep -----------------------------------


class LateNodes:
    """Lists the node online only at the ``after``-th question."""

    def __init__(self, after: int) -> None:
        self.after = after
        self.asked = 0

    def node_state(self, participant: str, since: float | None = None) -> str:
        self.asked += 1
        return ONLINE if self.asked >= self.after else OFFLINE


def test_the_online_wait_pauses_briefly_and_backs_off(tmp_path: Path) -> None:
    part = fake_participant("us", 1)
    transport = ScriptedTransport({f"{vm.host}:{vm.port}": VmScript() for vm in part.vms})
    sleeps: list[float] = []
    nodes = LateNodes(after=8)
    orch = Orchestrator([part], {"us": launch(tmp_path, "us")}, transport=transport,
                        nodes=nodes, settings=settings(online_timeout_s=30),
                        state_dir=tmp_path / "state", superlink_flwr="1.41.0",
                        sleep=sleeps.append)
    result = orch.dispatch()
    assert result.ok and nodes.asked == 8
    assert sleeps == [ONLINE_POLL_S * 2 ** i if ONLINE_POLL_S * 2 ** i < ONLINE_POLL_CAP_S
                      else ONLINE_POLL_CAP_S for i in range(7)]
    assert max(sleeps) <= ONLINE_POLL_CAP_S < 1.0


# --- the node list: Control API when the CLI's config names the connection --------------------


class NoList:
    def __init__(self, config_path: Path) -> None:
        self.config_path = config_path

    def list_nodes(self, connection: str) -> Sequence[NodeEntry]:
        raise AssertionError("the CLI must not be called")


def test_the_control_api_lister_is_built_from_the_cli_config(tmp_path: Path) -> None:
    config = tmp_path / "config.toml"
    config.write_text('[superlink]\ndefault = "fed"\n\n[superlink.fed]\n'
                      'address = "127.0.0.1:9"\nroot-certificates = "/certs/ca.pem"\n')
    nodes = SuperLinkNodes(NoList(config), "fed", {"us": 1})
    assert isinstance(nodes.lister, ControlApi)
    assert nodes.lister.address == "127.0.0.1:9"
    assert nodes.lister.root_certificates == Path("/certs/ca.pem")
    assert nodes.max_age_s == CONTROL_LIST_MAX_AGE_S
    other = SuperLinkNodes(NoList(config), "other", {"us": 1})
    assert other.lister is other.cli and other.max_age_s == NODE_LIST_MAX_AGE_S
    assert ControlApi.from_config(tmp_path / "missing.toml", "fed") is None


def test_an_unreachable_control_api_is_one_line_naming_it(tmp_path: Path) -> None:
    lister = ControlApi("127.0.0.1:9", None)  # discard port: nothing listens
    with pytest.raises(OrchestratorError, match=r"Control API at 127\.0\.0\.1:9 \(connection "
                       r"'fed'\) did not list its nodes") as err:
        lister.list_nodes("fed")
    assert "\n" not in str(err.value).strip()
