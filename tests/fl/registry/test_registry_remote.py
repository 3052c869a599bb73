"""The same Model Manager against a remote tracking URI: a real ``mlflow server`` on loopback.

The ServerApp, ``fedcloud models best`` and ``download`` talk to it over HTTP exactly as to the
embedded store; artifacts are proxied by the server (``--artifacts-destination``).
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

import pytest
import torch
from registry_fixtures import fresh_store_dir

from fl.app.records import RoundRecord
from fl.app.task import build_model
from fl.registry.criteria import Criteria
from fl.registry.store import load_model, mlflow_env, open_store

START_TIMEOUT_S = 120.0
SPEC = {"model": "covid_cnn", "width": 4, "image_size": 32, "num_classes": 3}


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


@pytest.mark.slow
def test_remote_store_records_recommends_and_downloads(server: str, tmp_path: Path) -> None:
    store = open_store(server, "fedcloud-remote")
    run_id = store.start_run("flwr-1", SPEC, {"stack": "remote", "flower_run_id": "1"})
    models = {}
    for n, (acc, f1) in enumerate([(0.5, 0.4), (0.92, 0.7), (0.95, 0.7)]):
        torch.manual_seed(n)
        models[n] = build_model(SPEC)
        metrics = {"loss": 1.0 - acc, "accuracy": acc, "precision": f1, "recall": f1, "f1": f1}
        store.log_round(RoundRecord(n, metrics), models[n].state_dict())
    store.end_run("FINISHED")

    reader = open_store(server, "fedcloud-remote")
    assert [r.server_round for r in reader.run(run_id).rounds] == [0, 1, 2]
    rec = reader.recommend(Criteria.parse("f1", ["accuracy=0.9"]))
    assert rec.round.server_round == 1  # tie on f1 with round 2: the earlier round
    path, card = reader.download(tmp_path / "best.pt", best=True)
    assert json.loads(card.read_text())["round"] == 1
    x = torch.randn(4, 1, 32, 32)
    with torch.no_grad():
        assert torch.equal(load_model(path)(x), models[1].eval()(x))
