"""Fast tests of the Flower side's pure parts.

Settings, certificates, command lines, data loaders, metrics, the app bundle and the ServerApp's
bounded node selection.
"""

from __future__ import annotations

import os
import pickle
import shlex
import stat
import subprocess
import sys
import time
import tomllib
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import load_ssh_private_key, load_ssh_public_key

from fedcloud.core.config import ROOT, from_mapping
from fedcloud.core.errors import ConfigError, TrainingError
from fedcloud.core.flower import superlink_argv
from fedcloud.core.stack import parse
from fedcloud.core.training import config_args
from fedcloud.local.synth import generate, partition
from fl.app import task
from fl.app.data import COVID_CLASSES, load_cifar, load_covid, load_split
from fl.app.errors import AppError
from fl.app.runconfig import RunConfig, RunConfigError
from fl.initializer.bundle import GENERATED_HEADER, PACKAGE_MARKER_TEXT, stage_app
from fl.initializer.certs import (
    ensure_deployment_certs,
    make_ca,
    make_server_cert,
    server_cert_sans,
)
from fl.orchestrator.supernode import supernode_argv, supernode_env, supernode_shell_command

# --- settings ------------------------------------------------------------------------------

# the smallest valid stack besides the training section
MINIMAL = {"limits": {"maxCost": 100, "maxLatencyMs": 300},
           "participants": [{"name": "p", "location": {"region": "aws:us-east-1"}}]}


def _training(**overrides: Any) -> Any:
    return parse(from_mapping("t", "test.yaml", {**MINIMAL, "training": overrides})).training


def test_training_defaults_come_from_pulumi_yaml_and_merge_per_key() -> None:
    settings = _training(rounds=5)
    assert settings.rounds == 5
    assert settings.model == "covid_cnn" and settings.width == 32 and settings.image_size == 224
    assert settings.num_classes == 3


@pytest.mark.parametrize(("overrides", "match"), [
    ({"rounds": 0}, r"training\.rounds must be >= 1, got 0"),  # no round at all
    ({"rounds": "three"}, r"training\.rounds must be a whole number"),  # not a number
    ({"learningRate": 0}, r"training\.learningRate must be > 0"),  # SGD needs a step
    ({"fractionTrain": 1.5}, r"training\.fractionTrain must be <= 1"),  # more than everyone
    ({"model": "covid_cn"}, r"did you mean 'covid_cnn'"),  # misspelt model
    ({"model": "cifar_cnn"}, r"cifar_cnn takes 32x32 images.*To fix: set .*imageSize to 32"),
    ({"imageSize": 100}, r"not a multiple of 8.*To fix: use 96"),  # three 2x pools
    ({"minNode": 2}, r"did you mean 'minNodes'"),  # unknown key
    ({"delayProb": 2}, r"training\.delayProb must be <= 1"),  # a probability
])
def test_bad_training_values_name_the_key_and_the_fix(overrides: dict[str, Any],
                                                      match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        _training(**overrides)


def test_run_config_string_round_trips_through_flowers_parser() -> None:
    from flwr.common.config import parse_config_args

    settings = _training(model="cifar_cnn", imageSize=32)
    arg = settings.run_config_arg(tracking_uri="/tmp/a b/registry", experiment="fedcloud-x")
    parsed = parse_config_args([arg])
    cfg = RunConfig.from_flower(parsed)
    assert cfg == settings.run_config("/tmp/a b/registry", "fedcloud-x")
    assert cfg.num_classes == 10


@pytest.mark.parametrize(("values", "match"), [
    ({"path": "it's"}, "holds a quote"),  # Flower's parser cannot escape quotes
    ({"bad key": 1}, "not a bare TOML key"),
])
def test_config_args_refuses_what_flower_cannot_parse(values: dict[str, Any], match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        config_args(values)


def test_run_config_from_flower_rejects_bad_values() -> None:
    good = _training(width=4, imageSize=32).run_config().to_flower()
    with pytest.raises(RunConfigError, match="'num-server-rounds' is missing"):
        RunConfig.from_flower({k: v for k, v in good.items() if k != "num-server-rounds"})
    with pytest.raises(RunConfigError, match="'batch-size' must be int"):
        RunConfig.from_flower({**good, "batch-size": 2.5})
    with pytest.raises(RunConfigError, match="'num-classes' is 10; covid_cnn has 3"):
        RunConfig.from_flower({**good, "num-classes": 10})


def test_parse_training_requires_a_mapping() -> None:
    raw = from_mapping("t", "test.yaml", {**MINIMAL, "training": [1, 2]})
    with pytest.raises(ConfigError, match=r"fedcloud:training must be a mapping"):
        parse(raw)


# --- certificates --------------------------------------------------------------------------


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_deployment_certs_sans_modes_and_node_keys(tmp_path: Path) -> None:
    certs = ensure_deployment_certs(tmp_path / "c", ["203.0.113.7", "agg.example.org"], ["us"])
    assert set(server_cert_sans(certs.server.cert)) == {"203.0.113.7", "agg.example.org",
                                                         "127.0.0.1"}
    for private in (certs.ca.key, certs.server.key, certs.nodes["us"].private_key):
        assert _mode(private) == 0o600
    key = load_ssh_private_key(certs.nodes["us"].private_key.read_bytes(), None)
    assert isinstance(key, ec.EllipticCurvePrivateKey) and key.curve.name == "secp384r1"
    pub = load_ssh_public_key(certs.nodes["us"].public_key.read_bytes())
    assert certs.nodes["us"].public_text().startswith("ecdsa-sha2-nistp384 ")
    assert isinstance(pub, ec.EllipticCurvePublicKey)
    # The server certificate chains to the CA.
    ca = x509.load_pem_x509_certificate(certs.ca.cert.read_bytes())
    server = x509.load_pem_x509_certificate(certs.server.cert.read_bytes())
    server.verify_directly_issued_by(ca)


def test_ensure_certs_keeps_node_keys_and_reissues_for_a_new_address(tmp_path: Path) -> None:
    first = ensure_deployment_certs(tmp_path, ["198.51.100.1"], ["us"])
    node_key = first.nodes["us"].private_key.read_bytes()
    ca = first.ca.cert.read_bytes()
    second = ensure_deployment_certs(tmp_path, ["198.51.100.2"], ["us"])
    assert second.nodes["us"].private_key.read_bytes() == node_key  # same node id on Flower
    assert second.ca.cert.read_bytes() == ca  # nodes keep trusting the same CA
    assert "198.51.100.2" in server_cert_sans(second.server.cert)


def test_server_cert_rejects_a_malformed_san(tmp_path: Path) -> None:
    ca = make_ca(tmp_path)
    with pytest.raises(ConfigError, match="neither an IP address nor a DNS name"):
        make_server_cert(ca, tmp_path, ["http://agg:8000"])


# --- command lines -------------------------------------------------------------------------


def test_superlink_argv_is_secure_by_default() -> None:
    argv = superlink_argv(database="/s/link.db", ca_cert="/c/ca.pem", server_cert="/c/s.pem",
                          server_key="/c/s.key", port=8000)
    assert argv[:5] == ["flower-superlink", "--host", "0.0.0.0", "--port", "8000"]
    for flag in ("--disable-runtime-dependency-installation", "--enable-supernode-auth"):
        assert flag in argv
    assert argv[argv.index("--database") + 1] == "/s/link.db"
    assert argv[argv.index("--ssl-ca-certfile") + 1] == "/c/ca.pem"
    assert "--insecure" not in argv


def test_superlink_argv_refuses_half_secure_setups() -> None:
    with pytest.raises(TrainingError, match="needs the CA certificate"):
        superlink_argv(database="d", ca_cert=None, server_cert=None, server_key=None)
    with pytest.raises(TrainingError, match="authentication needs TLS"):
        superlink_argv(database="d", ca_cert=None, server_cert=None, server_key=None,
                       insecure=True, node_auth=True)
    argv = superlink_argv(database="d", ca_cert=None, server_cert=None, server_key=None,
                          insecure=True, node_auth=False)
    assert "--insecure" in argv and "--enable-supernode-auth" not in argv


def test_supernode_argv_carries_data_dir_key_and_bounded_wait() -> None:
    from flwr.common.config import parse_config_args

    argv = supernode_argv(superlink="203.0.113.7:8000", data_dir="/data/covid x-ray",
                          participant="us", ca_cert="/etc/fedcloud/ca.pem",
                          private_key="/etc/fedcloud/us.key", max_wait_time_s=90,
                          torch_threads=2)
    assert argv[argv.index("--superlink") + 1] == "203.0.113.7:8000"
    assert argv[argv.index("--max-wait-time") + 1] == "90"
    assert argv[argv.index("--root-certificates") + 1] == "/etc/fedcloud/ca.pem"
    assert argv[argv.index("--auth-supernode-private-key") + 1] == "/etc/fedcloud/us.key"
    node_config = parse_config_args([argv[argv.index("--node-config") + 1]])
    assert node_config == {"data-dir": "/data/covid x-ray", "participant": "us",
                           "torch-threads": 2}
    with pytest.raises(TrainingError, match="needs the deployment CA certificate"):
        supernode_argv(superlink="h:1", data_dir="/d", participant="us", ca_cert=None,
                       private_key="/k")


def test_supernode_shell_command_runs_under_sh(tmp_path: Path) -> None:
    argv = [sys.executable, "-c", "import os,sys; print(os.environ['FLWR_HOME'], "
            "os.environ['FLWR_TELEMETRY_ENABLED'], sys.argv[1])", "a b'c"]
    env = supernode_env(str(tmp_path / "home dir"), venv_bin="/opt/venv/bin")
    line = supernode_shell_command(argv, env)
    out = subprocess.run(["sh", "-c", line], capture_output=True, text=True, check=True,
                         env={"PATH": os.environ["PATH"]}).stdout
    assert out.strip() == f"{tmp_path / 'home dir'} 0 a b'c"
    assert shlex.split(line)[0] == "exec"


# --- data ----------------------------------------------------------------------------------


def test_covid_loader_reads_the_generated_kaggle_layout(tmp_path: Path) -> None:
    dirs = generate("covid", tmp_path, ["a", "b"], 9, 6, image_size=24, seed=1)
    for split in ("train", "test"):
        for cls in COVID_CLASSES:
            assert (dirs["a"] / split / cls).is_dir()
    raw = load_covid(dirs["a"], "train", image_size=16)
    assert raw.x.shape == (9, 1, 16, 16) and raw.x.dtype == np.uint8
    train = load_split("covid_cnn", dirs["a"], "train", 16)
    assert train.x.dtype == np.float32 and train.x.min() >= -1.0 and train.x.max() <= 1.0
    assert np.allclose(train.x, raw.x / 127.5 - 1.0, atol=1e-6)
    assert sorted(np.bincount(train.y, minlength=3).tolist()) == [3, 3, 3]  # IID, balanced
    assert len(load_covid(dirs["b"], "test", 16)) == 6


def test_covid_loader_errors_name_the_folder(tmp_path: Path) -> None:
    dirs = generate("covid", tmp_path, ["a"], 3, 3, image_size=16)
    (dirs["a"] / "train" / "Normal").rename(dirs["a"] / "train" / "normal")
    with pytest.raises(AppError, match=r"class folder .*train/Normal is missing"):
        load_covid(dirs["a"], "train", 16)
    with pytest.raises(AppError, match=r"does not exist .*Kaggle Covid-19 layout"):
        load_covid(tmp_path / "nowhere", "test", 16)


def test_cifar_loader_reads_the_python_batches(tmp_path: Path) -> None:
    dirs = generate("cifar", tmp_path, ["a"], 20, 10, seed=2)
    train = load_split("cifar_cnn", dirs["a"], "train", 32)
    test = load_cifar(dirs["a"] / "cifar-10-batches-py", "test")  # the folder itself works too
    assert train.x.shape == (20, 3, 32, 32) and len(test) == 10
    with open(dirs["a"] / "cifar-10-batches-py" / "data_batch_1", "rb") as handle:
        batch = pickle.load(handle, encoding="bytes")
    assert batch[b"data"].dtype == np.uint8 and batch[b"data"].shape == (20, 3072)
    (dirs["a"] / "cifar-10-batches-py" / "test_batch").write_bytes(b"not a pickle")
    with pytest.raises(AppError, match="is not a CIFAR-10 python batch"):
        load_cifar(dirs["a"], "test")


def test_dirichlet_partition_covers_everything_and_skews_with_small_alpha() -> None:
    labels = np.arange(600) % 3
    rng = np.random.default_rng(0)

    def skew(alpha: float | None) -> float:
        parts = partition(labels, 3, alpha, rng)
        joined = np.sort(np.concatenate(parts))
        assert np.array_equal(joined, np.arange(600))  # every sample exactly once
        assert min(len(p) for p in parts) > 0
        # Mean over participants of the largest class share.
        return float(np.mean([np.bincount(labels[p], minlength=3).max() / len(p)
                              for p in parts]))

    assert skew(None) < 0.4 < skew(0.1)
    with pytest.raises(ConfigError, match="alpha must be > 0"):
        partition(labels, 3, 0.0, rng)


# --- model and metrics ---------------------------------------------------------------------


def test_full_width_covid_cnn_is_the_briefs_26_mb_model() -> None:
    full = task.build_model({"model": "covid_cnn", "width": 32, "image_size": 224,
                             "num_classes": 3})
    assert 25e6 < task.model_bytes(full) < 27e6
    cifar = task.build_model({"model": "cifar_cnn", "width": 1, "image_size": 32,
                              "num_classes": 10})
    assert [tuple(p.shape) for p in cifar.parameters()][::2] == [
        (6, 3, 5, 5), (16, 6, 5, 5), (120, 400), (84, 120), (10, 84)]
    with pytest.raises(AppError, match="unknown model 'resnet'"):
        task.build_model({"model": "resnet", "num_classes": 3})


def test_metrics_from_a_hand_made_confusion_matrix() -> None:
    cm = np.array([[5, 0, 0],   # class 0: all right
                   [2, 3, 0],   # class 1: 3 of 5
                   [0, 0, 0]])  # class 2: absent and never predicted -> not averaged
    m = task.metrics_from_confusion(cm)
    assert m["accuracy"] == pytest.approx(0.8)
    assert m["precision"] == pytest.approx((5 / 7 + 1.0) / 2)
    assert m["recall"] == pytest.approx((1.0 + 0.6) / 2)
    f1_0, f1_1 = 2 * (5 / 7) / (5 / 7 + 1), 2 * 0.6 / 1.6
    assert m["f1"] == pytest.approx((f1_0 + f1_1) / 2)


def test_global_f1_comes_from_summed_matrices_not_a_mean_of_client_f1() -> None:
    a = np.array([[4, 0], [0, 0]])  # client A: only class 0, all right
    b = np.array([[0, 0], [3, 1]])  # client B: only class 1, mostly wrong
    agg = task.aggregate_evaluations([(4, 0.2, a), (4, 1.0, b)])
    assert agg["confusion"] == [[4, 0], [3, 1]]
    assert agg["loss"] == pytest.approx(0.6)
    assert agg["accuracy"] == pytest.approx(5 / 8)
    summed = task.metrics_from_confusion(np.array([[4, 0], [3, 1]]))
    mean_of_clients = (task.metrics_from_confusion(a)["f1"]
                       + task.metrics_from_confusion(b)["f1"]) / 2
    assert agg["f1"] == pytest.approx(summed["f1"])
    assert agg["f1"] != pytest.approx(mean_of_clients)
    with pytest.raises(AppError, match="no evaluation replies"):
        task.aggregate_evaluations([])


def test_train_then_evaluate_learns_the_synthetic_patterns(tmp_path: Path) -> None:
    import torch

    torch.manual_seed(0)
    torch.set_num_threads(1)
    dirs = generate("covid", tmp_path, ["a"], 60, 30, image_size=32, seed=3)
    train = load_split("covid_cnn", dirs["a"], "train", 32)
    test = load_split("covid_cnn", dirs["a"], "test", 32)
    model = task.build_model({"model": "covid_cnn", "width": 4, "image_size": 32,
                              "num_classes": 3})
    stats = task.train(model, train.x, train.y, epochs=6, batch_size=8, learning_rate=0.05)
    _loss, cm = task.evaluate(model, test.x, test.y, num_classes=3)
    assert stats["num_examples"] == 60 and stats["train_time_s"] > 0
    assert cm.sum() == 30
    assert task.metrics_from_confusion(cm)["accuracy"] > 0.6


# --- the app bundle ------------------------------------------------------------------------


def test_bundle_holds_exactly_fl_app_and_its_generated_config(tmp_path: Path) -> None:
    from flwr.common.config import validate_config

    cfg = _training(width=4, imageSize=32).run_config(tracking_uri="/r")
    app = stage_app(tmp_path / "app", cfg)
    staged = {p.relative_to(app).as_posix() for p in app.rglob("*") if p.is_file()}
    sources = {p.relative_to(ROOT).as_posix() for p in (ROOT / "fl" / "app").rglob("*.py")
               if "__pycache__" not in p.parts}
    assert {"fl/app/server_app.py", "fl/app/client_app.py", "fl/app/task.py",
            "fl/app/strategy.py", "fl/app/store.py", "fl/app/__init__.py"} <= sources
    assert staged == {"pyproject.toml", "fl/__init__.py"} | sources
    for rel in sources:  # byte for byte
        assert (app / rel).read_bytes() == (ROOT / rel).read_bytes(), rel
    # The package marker is generated (the repository's fl/__init__.py does not travel).
    assert (app / "fl" / "__init__.py").read_text() == PACKAGE_MARKER_TEXT
    text = (app / "pyproject.toml").read_text()
    assert text.splitlines()[0] == GENERATED_HEADER
    doc = tomllib.loads(text)
    assert doc["tool"]["flwr"]["app"]["components"] == {
        "serverapp": "fl.app.server_app:app", "clientapp": "fl.app.client_app:app"}
    assert doc["tool"]["flwr"]["app"]["config"] == cfg.to_flower()
    assert "federations" not in doc["tool"]["flwr"]
    ok, errors, _warnings = validate_config(doc)
    assert ok, errors
    size = sum(p.stat().st_size for p in app.rglob("*") if p.is_file())
    assert size < 200_000  # far below Flower's 10 MB FAB limit
    # Restaging replaces the app (a stale file goes); a directory that is not a staged app is
    # never overwritten.
    (app / "fl" / "app" / "stale.py").write_text("")
    stage_app(tmp_path / "app", cfg)
    assert not (app / "fl" / "app" / "stale.py").exists()
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "pyproject.toml").write_text("[project]\nname = 'mine'\n")
    with pytest.raises(TrainingError, match="is not a staged fedcloud app"):
        stage_app(tmp_path / "mine", cfg)
    assert (tmp_path / "mine" / "pyproject.toml").read_text().startswith("[project]")


# --- the ServerApp's bounded waits ---------------------------------------------------------


class _Grid:
    """A Grid double that reports a fixed set of connected nodes."""

    def __init__(self, nodes: list[int]) -> None:
        self.nodes = nodes

    def get_node_ids(self) -> list[int]:
        return list(self.nodes)


def test_server_never_waits_forever_for_missing_nodes() -> None:
    from fl.app.strategy import BoundedFedAvg, NodesLostError

    cfg = replace_cfg(min_nodes=3, node_wait_s=0.3)
    strategy = BoundedFedAvg(cfg, store=None)
    with pytest.raises(NodesLostError, match=r"2 node\(s\) connected after waiting 0.3 s; "
                       r"at least 3 needed"):
        strategy.select_nodes(_Grid([1, 2]), "train", 1)  # type: ignore[arg-type]


def test_server_skips_a_silent_node_while_enough_others_are_online() -> None:
    from fl.app.strategy import BoundedFedAvg

    strategy = BoundedFedAvg(replace_cfg(min_nodes=2, node_wait_s=0), store=None)
    grid = _Grid([1, 2, 3])
    assert strategy.select_nodes(grid, "train", 1) == [1, 2, 3]  # type: ignore[arg-type]
    strategy.dropped.add(3)  # node 3 missed the train phase
    assert strategy.select_nodes(grid, "evaluate", 1) == [1, 2]  # type: ignore[arg-type]
    grid.nodes = [2, 3]  # node 1 left too: node 3 is re-admitted rather than stopping
    assert strategy.select_nodes(grid, "train", 2) == [2, 3]  # type: ignore[arg-type]


def replace_cfg(**changes: Any) -> RunConfig:
    return replace(_training(width=4, imageSize=32).run_config(), **changes)


# --- the initializer's own bound -----------------------------------------------------------


class _StuckCli:
    """A FlwrCli double whose run never finishes (a real child process stands in for the stream)."""

    def __init__(self, home: Path) -> None:
        self.home = home
        self.stopped: list[int] = []

    def write_connection(self, *args: Any, **kwargs: Any) -> Path:
        return self.home / "config.toml"

    def run(self, app_dir: Path, connection: str, run_config: str, on_line: Any = None) -> Any:
        import threading

        from fl.initializer.flwr_cli import RunStream

        assert (app_dir / "pyproject.toml").exists() and "num-server-rounds=1" in run_config
        proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"],
                                stdout=subprocess.PIPE, text=True)
        reader = threading.Thread(target=lambda: proc.stdout.read(), daemon=True)  # type: ignore[union-attr]
        reader.start()
        return RunStream(run_id=7, proc=proc, lines=[], reader=reader)

    def run_info(self, connection: str, run_id: int) -> Any:
        from fl.initializer.flwr_cli import run_info_from_json

        status = "finished:stopped" if self.stopped else "running"
        return run_info_from_json({"run-id": str(run_id), "status": status})

    def stop_run(self, run_id: int, connection: str) -> None:
        self.stopped.append(run_id)


def test_initializer_stops_a_run_that_outlives_its_bound(tmp_path: Path) -> None:
    from fl.initializer.training import start_training

    cli = _StuckCli(tmp_path)
    cfg = replace_cfg(rounds=1)
    started = time.monotonic()
    result = start_training(superlink="127.0.2.1:1", ca_cert=None, node_keys={},
                            run_config=cfg, state_dir=tmp_path, insecure=True,
                            timeout_s=0.5, cli=cli)  # type: ignore[arg-type]
    assert (result.status, result.flower_status) == ("TIMED_OUT", "finished:stopped")
    assert cli.stopped == [7]
    # The behaviour under test is the bound itself: the child "stream" would run for 60 s.
    assert time.monotonic() - started < 30


# --- the ClientApp, called in-process on the CIFAR layout -----------------------------------


def test_client_app_trains_evaluates_and_applies_the_delay_study(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from flwr.app import ArrayRecord, ConfigRecord, Context, Message, RecordDict
    from flwr.supercore.task_identity import TaskIdentity

    from fl.app import client_app

    # Flower sets the task identity in its ClientApp process; messages need it to be built.
    for attr in ("_run_id", "_node_id", "_task_id"):
        monkeypatch.setattr(TaskIdentity, attr, 1)
    data = generate("cifar", tmp_path, ["eu"], 8, 5, seed=4)["eu"]
    cfg = replace(_training(model="cifar_cnn", imageSize=32).run_config(), batch_size=4,
                  delay_prob=1.0, delay_s=0.2, secure_aggregation=False)
    model = task.build_model(cfg.model_spec())
    content = RecordDict({"arrays": ArrayRecord(model.state_dict()),
                          "config": ConfigRecord({"server-round": 1})})
    msg = Message(content=content, dst_node_id=1, message_type="train")
    ctx = Context(run_id=1, node_id=1, state=RecordDict(), run_config=cfg.to_flower(),
                  node_config={"data-dir": str(data), "participant": "eu", "torch-threads": 1,
                               "cache-dir": str(tmp_path / "home-cache")})
    reply = client_app.train(msg, ctx)
    metrics = reply.content.metric_records["metrics"]
    assert (metrics["num-examples"], metrics["delay-s"]) == (8, 0.2)
    assert metrics["process-s"] > metrics["train-time-s"]  # this process outlived its training
    # One exchange: the same reply evaluates the received model on the test split.
    assert metrics["eval-examples"] == 5 and sum(metrics["confusion"]) == 5
    assert reply.content.config_records["client"]["participant"] == "eu"
    assert len(reply.content.array_records["arrays"]) == len(model.state_dict())
    evaluated = client_app.evaluate(msg, ctx).content.metric_records["metrics"]
    confusion = np.asarray(evaluated["confusion"]).reshape(10, 10)
    assert evaluated["eval-examples"] == 5 and confusion.sum() == 5
    assert evaluated["eval-loss"] == metrics["eval-loss"]  # the same received model
    f16 = replace(cfg, wire_dtype="float16", delay_prob=0.0)
    ctx.run_config = f16.to_flower()
    arrays = client_app.train(msg, ctx).content.array_records["arrays"]
    assert {a.numpy().dtype.name for k, a in arrays.items()
            if not k.endswith("@scale")} == {"float16"}
    assert list((tmp_path / "home-cache").glob("*.npz")), "the decoded splits are cached"
    no_delay = replace(cfg, delay_prob=0.0)
    ctx.run_config = no_delay.to_flower()
    assert client_app.train(msg, ctx).content.metric_records["metrics"]["delay-s"] == 0.0
    # A secure run's ClientApp never answers a plain train message (its update would leave).
    ctx.run_config = replace(no_delay, secure_aggregation=True).to_flower()
    with pytest.raises(AppError, match="without the secure aggregation stages"):
        client_app.train(msg, ctx)
