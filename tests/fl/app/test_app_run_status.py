"""The ServerApp never leaves its MLflow run RUNNING: FAILED on errors, KILLED on SIGTERM/SIGINT.

Real round writers on temporary embedded stores; the signal cases run in a child process that
the test signals, as the SuperLink host (or systemd) would.
"""

from __future__ import annotations

import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from flwr.app import Context, RecordDict
from registry_fixtures import fresh_store_dir

from fl.app import server_app
from fl.app.runconfig import RunConfig
from fl.app.strategy import NodesLostError
from fl.registry.store import open_store

REPO = Path(__file__).resolve().parents[3]
EXPERIMENT = "fedcloud-status"

CHILD = """
import signal, sys, time
from fl.app.server_app import RunCloser, killed_on_signal
from fl.app.store import open_writer
store = open_writer(sys.argv[1], "fedcloud-status")
if sys.argv[2] == "flower":  # what flwr-serverapp installs: a graceful exit with its own code
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(3))
store.start_run("child", {"model": "covid_cnn"}, {"stack": "status"})
with killed_on_signal(RunCloser(store)):
    print("ready", flush=True)
    time.sleep(120)
"""


@pytest.mark.parametrize(("previous", "code"), [("default", -signal.SIGTERM), ("flower", 3)])
def test_sigterm_closes_the_run_as_killed(tmp_path: Path, previous: str, code: int) -> None:
    location = fresh_store_dir(tmp_path / "store")
    child = subprocess.Popen([sys.executable, "-c", CHILD, location, previous], cwd=REPO,
                             stdout=subprocess.PIPE, text=True)
    try:
        assert child.stdout is not None
        assert child.stdout.readline().strip() == "ready"
        child.send_signal(signal.SIGTERM)
        assert child.wait(timeout=60) == code  # the signal still ends the process
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()
    (run,) = open_store(location, EXPERIMENT).runs()
    assert run.status == "KILLED"


class NoNodes:
    """A grid where no SuperNode ever connects."""

    def get_node_ids(self) -> list[int]:
        return []

    def send_and_receive(self, messages: Any, timeout: float | None = None) -> list[Any]:
        list(messages)  # the strategy samples nodes while the messages are built
        return []


def run_config(location: str) -> dict[str, Any]:
    cfg = RunConfig(model="covid_cnn", width=2, image_size=8, num_classes=3, rounds=2,
                    local_epochs=1, batch_size=4, learning_rate=0.1, fraction_train=1.0,
                    min_nodes=1, phase_timeout_s=5.0, node_wait_s=0.0, seed=0,
                    secure_aggregation=False, tracking_uri=location, experiment=EXPERIMENT,
                    stack="status", run_name="no-nodes")
    return dict(cfg.to_flower())


def test_a_failed_run_is_closed_as_failed_with_each_param_once(tmp_path: Path) -> None:
    location = fresh_store_dir(tmp_path / "store")
    context = Context(run_id=7, node_id=0, node_config={}, state=RecordDict(),
                      run_config=run_config(location))
    with pytest.raises(NodesLostError, match="0 node"):
        server_app.main(NoNodes(), context)  # type: ignore[arg-type]
    (run,) = open_store(location, EXPERIMENT).runs()
    assert (run.run_name, run.status) == ("no-nodes", "FAILED")
    assert run.params["image_size"] == "8" and run.params["rounds"] == "2"
    assert not [k for k in run.params if "-" in k]  # no Flower-key duplicates (image-size)
    assert not {"tracking_uri", "experiment", "stack"} & set(run.params)
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL  # the handler is gone again


def test_closing_twice_or_a_failing_store_keeps_the_first_status() -> None:
    class Store:
        def __init__(self) -> None:
            self.calls: list[str] = []

        def end_run(self, status: str) -> None:
            self.calls.append(status)
            raise RuntimeError("store unreachable")

    store = Store()
    closer = server_app.RunCloser(store)  # type: ignore[arg-type]
    closer.close("FAILED")  # logged, not raised: the training error is what matters
    closer.close("KILLED")
    assert store.calls == ["FAILED"]
