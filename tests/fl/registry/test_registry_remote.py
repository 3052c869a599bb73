"""The same Model Manager against a remote tracking URI: a real ``mlflow server`` on loopback.

The ServerApp's writer, ``recommend`` and ``download`` talk to it over HTTP exactly as to the
embedded store; artifacts are proxied by the server (``--artifacts-destination``). The best
round is then loaded through MLflow itself (pytorch flavor and pyfunc, numpy and pandas input).
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch
from registry_fixtures import fresh_store_dir

from fl.app.records import RoundRecord
from fl.app.runconfig import RunConfig
from fl.app.server_app import _start_store_run, open_round_store
from fl.app.task import build_model
from fl.registry.criteria import Criteria
from fl.registry.store import load_model, mlflow_env, open_store

START_TIMEOUT_S = 120.0


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    root = tmp_path_factory.mktemp("mlflow-server")
    db = Path(fresh_store_dir(root / "db")) / "mlflow.db"
    port = free_port()
    mlflow_cli = Path(sys.executable).with_name("mlflow")
    log = (root / "server.log").open("w")
    proc = subprocess.Popen(
        [str(mlflow_cli), "server", "--host", "127.0.0.1", "--port", str(port), "--workers", "1",
         "--backend-store-uri", f"sqlite:///{db}", "--artifacts-destination",
         str(root / "artifacts")],
        env=mlflow_env(), stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + START_TIMEOUT_S
        while True:
            try:
                with urllib.request.urlopen(f"{url}/health", timeout=2) as reply:
                    if reply.status == 200:
                        break
            except (urllib.error.URLError, ConnectionError, TimeoutError):
                pass
            assert proc.poll() is None, (root / "server.log").read_text()[-2000:]
            assert time.monotonic() < deadline, "mlflow server did not start"
            time.sleep(0.5)
        yield url
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        log.close()


SERVER_SPEC: dict[str, Any] = {"model": "covid_cnn", "width": 4, "image_size": 16, "num_classes": 3}


def app_config(server: str) -> RunConfig:
    return RunConfig(**SERVER_SPEC, rounds=3, local_epochs=1, batch_size=8, learning_rate=0.05,
                     fraction_train=1.0, min_nodes=2, phase_timeout_s=60.0, node_wait_s=30.0,
                     seed=1, tracking_uri=server, experiment="fedcloud-remote", stack="remote")


@pytest.mark.slow
def test_remote_store_records_recommends_and_serves_an_mlflow_model(
        server: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The ServerApp's writer over HTTP, then the best round loaded the MLflow way."""
    import mlflow
    import mlflow.pyfunc
    import mlflow.pytorch
    import numpy as np
    import pandas as pd
    from mlflow.entities import ViewType

    cfg = app_config(server)
    writer = open_round_store(cfg)  # fl.app.store.open_writer, as on the aggregator
    assert writer is not None
    run_id = _start_store_run(writer, cfg, 4242, 1000)
    models = {}
    for n, (acc, f1) in enumerate([(0.5, 0.4), (0.92, 0.7), (0.95, 0.7)], start=1):
        torch.manual_seed(n)
        models[n] = build_model(SERVER_SPEC)
        metrics = {"loss": 1.0 - acc, "accuracy": acc, "precision": f1, "recall": f1, "f1": f1}
        clients = ({"participant": "us", "num_examples": 5, "accuracy": acc},)
        writer.log_round(RoundRecord(n, metrics, clients), models[n].state_dict())
    writer.end_run("FINISHED")

    reader = open_store(server, "fedcloud-remote")
    info = reader.run(run_id)
    assert [(r.server_round, r.participants) for r in info.rounds] == [
        (1, ("us",)), (2, ("us",)), (3, ("us",))]
    assert info.params["image_size"] == "16" and "image-size" not in info.params
    rec = reader.recommend(Criteria.parse("f1", ["accuracy=0.9"]))
    assert rec.round.server_round == 2  # tie on f1 with round 3: the earlier round
    path, card = reader.download(tmp_path / "best.pt", best=True)
    assert json.loads(card.read_text())["round"] == 2

    x = np.random.default_rng(7).standard_normal((5, 1, 16, 16)).astype(np.float32)
    with torch.no_grad():
        expected = load_model(path)(torch.from_numpy(x)).numpy()
        assert np.allclose(expected, models[2].eval()(torch.from_numpy(x)).numpy(), atol=1e-6)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", server)
    uri = f"models:/{reader.model_name}@best"
    flavor = mlflow.pytorch.load_model(uri)
    with torch.no_grad():
        got = flavor(torch.from_numpy(x)).numpy()
    assert np.abs(got - expected).max() <= 1e-6
    served = mlflow.pyfunc.load_model(uri)
    assert np.abs(np.asarray(served.predict(x)) - expected).max() <= 1e-6
    frame = pd.DataFrame({"image": [image.reshape(-1).tolist() for image in x]})
    assert np.abs(np.asarray(served.predict(frame)) - expected).max() <= 1e-6

    client = reader.client
    exp = client.get_experiment_by_name("fedcloud-remote")
    assert exp is not None and exp.tags["mlflow.experimentKind"] == "custom_model_development"
    holding = {e.name for e in client.search_experiments(view_type=ViewType.ALL)
               if client.search_runs([e.experiment_id], run_view_type=ViewType.ALL)}
    assert holding == {"fedcloud-remote"}  # the server's own "Default" holds nothing
    version = client.get_model_version_by_alias(reader.model_name, "best")
    assert version.run_id == run_id and client.get_run(run_id).info.status == "FINISHED"
