"""The staged Flower app runs on its own: nothing of the project but the FAB's files is importable.

A fresh interpreter is started isolated (``-I``: no PYTHONPATH, no script directory) and without
``site`` (``-S``: the editable install's path finder is never installed), with ``sys.path`` = the
staged app directory + the venv's site-packages + the standard library. There it loads both
components the way Flower does (``flwr.supercore.object_ref.load_app``), builds the model, runs one
train/evaluate step on random arrays and records one round with the app's own MLflow writer.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import sysconfig
from pathlib import Path

from registry_fixtures import fresh_store_dir

from fedcloud.core.config import ROOT
from fl.app.runconfig import RunConfig
from fl.initializer.bundle import stage_app

PROBE = r"""
import importlib, json, sys
from pathlib import Path

app_dir, store_dir = sys.argv[1], sys.argv[2]
sys.path[:0] = [app_dir, *sys.argv[3:]]
hidden = {}
for name in ("fedcloud", "infra", "optimizer", "fl.registry", "fl.initializer",
             "fl.orchestrator"):
    try:
        importlib.import_module(name)
        hidden[name] = "imported"
    except ModuleNotFoundError:
        hidden[name] = "missing"

import numpy as np
from flwr.clientapp import ClientApp
from flwr.serverapp import ServerApp
from flwr.supercore.object_ref import load_app

server = load_app("fl.app.server_app:app", RuntimeError, app_dir)
client = load_app("fl.app.client_app:app", RuntimeError, app_dir)
assert isinstance(server, ServerApp) and isinstance(client, ClientApp)

from fl.app import task
from fl.app.records import RoundRecord
from fl.app.runconfig import RunConfig
from fl.app.store import open_writer
from fl.app.strategy import BoundedFedAvg

cfg = RunConfig.from_flower(json.loads(sys.stdin.read()))
model = task.build_model(cfg.model_spec())
rng = np.random.default_rng(0)
x = rng.uniform(-1, 1, (8, 1, cfg.image_size, cfg.image_size)).astype(np.float32)
y = rng.integers(0, cfg.num_classes, 8).astype(np.int64)
stats = task.train(model, x, y, epochs=1, batch_size=4, learning_rate=0.01, seed=1)
loss, cm = task.evaluate(model, x, y, num_classes=cfg.num_classes)
BoundedFedAvg(cfg, store=None)

writer = open_writer(store_dir, "fedcloud-isolated")
run_id = writer.start_run("isolated", cfg.model_spec(), {"stack": "isolated"})
metrics = {"loss": loss, **task.metrics_from_confusion(cm)}
writer.log_round(RoundRecord(1, metrics), model.state_dict())
writer.end_run("FINISHED")

project = sorted(name for name in sys.modules
                 if name.split(".")[0] in ("fl", "fedcloud", "infra", "optimizer"))
print(json.dumps({
    "hidden": hidden,
    "files": {name: sys.modules[name].__file__ for name in project},
    "train_examples": stats["num_examples"], "evaluated": int(cm.sum()),
    "run_id": run_id,
}))
"""


def _site_packages() -> list[str]:
    paths = sysconfig.get_paths()
    return sorted({paths["purelib"], paths["platlib"]})


def test_staged_app_imports_and_runs_with_the_project_hidden(tmp_path: Path) -> None:
    cfg = RunConfig(model="covid_cnn", width=4, image_size=16, num_classes=3, rounds=1,
                    local_epochs=1, batch_size=4, learning_rate=0.01, fraction_train=1.0,
                    min_nodes=1, phase_timeout_s=60.0, node_wait_s=0.0, seed=0,
                    secure_aggregation=False)  # one node: a sum of one is no secret
    app = stage_app(tmp_path / "app", cfg)
    env = {"PATH": os.environ.get("PATH", ""), "HOME": str(tmp_path),
           "FLWR_TELEMETRY_ENABLED": "0", "FLWR_DISABLE_UPDATE_CHECK": "1",
           "MLFLOW_DISABLE_TELEMETRY": "true", "DO_NOT_TRACK": "true"}
    store = fresh_store_dir(tmp_path / "store")  # a migrated empty database: saves seconds
    proc = subprocess.run(
        [sys.executable, "-I", "-S", "-c", PROBE, str(app), store, *_site_packages()],
        input=json.dumps(cfg.to_flower()), capture_output=True, text=True, cwd=tmp_path,
        env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    # The rest of the project cannot be imported, even through the editable install.
    assert set(out["hidden"].values()) == {"missing"}, out["hidden"]
    # Every project module that was loaded came from the staged app, none from the repository.
    assert "fl.app.server_app" in out["files"] and "fl.app.store" in out["files"]
    for name, file in out["files"].items():
        assert Path(file).is_relative_to(app), (name, file)
        assert not Path(file).is_relative_to(ROOT / "fl"), (name, file)
    assert out["files"]["fl"] == str(app / "fl" / "__init__.py")
    assert (out["train_examples"], out["evaluated"]) == (8, 8)
    # The round the app's writer recorded is readable on the operator's side.
    from fl.registry.store import open_store

    run = open_store(store, "fedcloud-isolated").run(out["run_id"])
    assert [r.server_round for r in run.rounds] == [1] and run.status == "FINISHED"
