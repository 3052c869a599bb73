"""Model Manager against a real MLflow store (SQLite + local artifacts) in a temporary directory.

One run of five rounds is recorded through ``fl.registry.store.open_store`` exactly as the ServerApp
does (start_run / log_round / end_run); recommendation, download, plot and the CLI read it back.
"""

from __future__ import annotations

import json
import math
import re
import struct
from io import BytesIO
from pathlib import Path
from typing import Any

import pytest
import torch
from PIL import Image
from registry_fixtures import fresh_store_dir

from fedcloud.cli.main import main
from fedcloud.core.errors import RegistryError
from fl.app.records import RoundRecord
from fl.app.task import build_model
from fl.registry.criteria import Criteria, choose
from fl.registry.store import (
    BEST_ALIAS,
    MlflowRoundStore,
    load_checkpoint,
    load_model,
    open_store,
    resolve_store,
)

STACK = "mm"
EXPERIMENT = f"fedcloud-{STACK}"
# The case study's CNN, small (fl/task.py: width 4 on 32 x 32 grayscale images).
SPEC: dict[str, Any] = {"model": "covid_cnn", "width": 4, "image_size": 32, "num_classes": 3}

# round: loss, accuracy, precision, recall, f1
ROUNDS: dict[int, tuple[float, float, float, float, float]] = {
    0: (1.10, 0.40, 0.35, 0.33, 0.30),
    1: (0.70, 0.80, 0.78, 0.77, 0.76),
    2: (0.50, 0.88, 0.86, 0.85, 0.84),
    3: (0.45, 0.91, 0.83, 0.84, 0.84),  # ties round 2 on f1, higher accuracy, lowest loss
    4: (0.55, 0.86, 0.87, 0.88, 0.87),  # best f1, but accuracy below 0.9
}
NAMES = ("loss", "accuracy", "precision", "recall", "f1")


def record(n: int) -> RoundRecord:
    metrics = dict(zip(NAMES, ROUNDS[n], strict=True))
    per_client = tuple(
        {"participant": name, "num_examples": 10 + i, "accuracy": metrics["accuracy"] - 0.01 * i,
         "f1": metrics["f1"] - 0.02 * i}
        for i, name in enumerate(("hospital-us", "hospital-asia", "hospital-eu")))
    return RoundRecord(server_round=n, metrics=metrics, per_client=per_client,
                       confusion=((3, 1, 0), (0, 4, 1), (1, 0, 5)),
                       extra={"max_client_train_s": 1.5 + n, "strategy": "fedavg"})


def record_run(store: MlflowRoundStore, rounds: list[int],
               ) -> tuple[str, dict[int, torch.nn.Module]]:
    run_id = store.start_run(
        "flwr-4242", {**SPEC, "rounds": len(rounds), "learning_rate": 0.01,
                      "aggregator": {"cloud": "aws", "region": "us-east-1",
                                     "instance_type": "t3.large"}},
        {"stack": STACK, "flower_run_id": "4242",
         "participants": "hospital-us,hospital-asia,hospital-eu"})
    models = {}
    for n in rounds:
        torch.manual_seed(n)
        models[n] = build_model(SPEC)
        store.log_round(record(n), models[n].state_dict())
    store.end_run("FINISHED")
    return run_id, models


@pytest.fixture(scope="module")
def recorded(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    root = tmp_path_factory.mktemp("registry")
    stack_file = root / f"Pulumi.{STACK}.yaml"
    stack_file.write_text(
        f"config:\n  fedcloud:stateDir: {root / 'state'}\n"
        "  fedcloud:limits: {maxCost: 100, maxLatencyMs: 300}\n"
        "  fedcloud:participants: [{name: p, location: {region: 'aws:us-east-1'}}]\n",
        encoding="utf-8")
    store = open_store(fresh_store_dir(root / "state" / "registry"), EXPERIMENT)
    run_id, models = record_run(store, sorted(ROUNDS))
    return {"root": root, "store": store, "run_id": run_id, "models": models,
            "stack_file": stack_file, "location": str(root / "state" / "registry")}


def test_every_round_is_recorded_with_params_tags_and_artifacts(recorded: dict[str, Any]) -> None:
    store = open_store(recorded["location"], EXPERIMENT)  # a fresh reader, as the CLI is
    info = store.run()
    assert info.run_id == recorded["run_id"]
    assert info.status == "FINISHED"
    assert [r.server_round for r in info.rounds] == sorted(ROUNDS)
    for r in info.rounds:
        assert dict(r.metrics) == dict(zip(NAMES, ROUNDS[r.server_round], strict=True))
        assert r.participants == ("hospital-asia", "hospital-eu", "hospital-us")
        # The commit marker is short and readable: the checkpoint's SHA-256, not a JSON blob.
        assert info.tags[f"fedcloud.round.{r.server_round:04d}"] == r.sha256
        assert re.fullmatch(r"[0-9a-f]{64}", r.sha256)
        assert r.checkpoint == f"rounds/round-{r.server_round:04d}/model.pt"
    assert info.params["model"] == "covid_cnn"
    assert json.loads(info.params["aggregator"])["region"] == "us-east-1"
    assert info.tags["stack"] == STACK and info.tags["flower_run_id"] == "4242"
    assert info.tags["participants"] == "hospital-us,hospital-asia,hospital-eu"
    assert info.tags["fedcloud.participants"] == "hospital-asia,hospital-eu,hospital-us"
    history = store.client.get_metric_history(info.run_id, "f1")
    assert sorted((m.step, m.value) for m in history) == [(n, v[4]) for n, v in ROUNDS.items()]
    client_hist = store.client.get_metric_history(info.run_id, "client/hospital-eu/accuracy")
    assert [(m.step, round(m.value, 6)) for m in sorted(client_hist, key=lambda m: m.step)] == [
        (n, round(v[1] - 0.02, 6)) for n, v in ROUNDS.items()]
    train_s = store.client.get_metric_history(info.run_id, "round/max_client_train_s")
    assert sorted((m.step, m.value) for m in train_s) == [(n, 1.5 + n) for n in ROUNDS]
    parts = store.client.get_metric_history(info.run_id, "round/participants")
    assert sorted((m.step, m.value) for m in parts) == [(n, 3.0) for n in ROUNDS]
    detail = json.loads(Path(store.client.download_artifacts(
        info.run_id, "rounds/round-0002/round.json", str(recorded["root"]))).read_text())
    assert detail["confusion"] == [[3, 1, 0], [0, 4, 1], [1, 0, 5]]
    assert detail["per_client"][1]["num_examples"] == 11
    assert detail["extra"]["strategy"] == "fedavg"


def test_the_store_is_a_machine_learning_experiment_without_a_default(
        recorded: dict[str, Any]) -> None:
    from mlflow.entities import ViewType

    client = open_store(recorded["location"], EXPERIMENT).client
    exp = client.get_experiment_by_name(EXPERIMENT)
    assert exp is not None and exp.tags["mlflow.experimentKind"] == "custom_model_development"
    # MLflow's SQL store inserts "Default" (id 0) on first use: retired, and never logged into.
    assert client.get_experiment("0").lifecycle_stage == "deleted"
    assert "Default" not in [e.name for e in client.search_experiments()]
    assert client.search_runs(["0"], run_view_type=ViewType.ALL) == []


def test_an_old_experiment_gets_the_kind_tag_when_written_again(tmp_path: Path) -> None:
    store = open_store(fresh_store_dir(tmp_path / "old"), "fedcloud-old")
    exp_id = store.client.create_experiment("fedcloud-old")  # as before the tag existed
    assert "mlflow.experimentKind" not in store.client.get_experiment(exp_id).tags
    assert store.experiment_id(create=True) == exp_id
    assert store.client.get_experiment(exp_id).tags["mlflow.experimentKind"] == (
        "custom_model_development")


# Pure choice: a row per rule (maximise/minimise, bounds, ties, NaN, infeasible).
CHOICES = [
    # metrics per candidate, criteria, expected index
    ([{"f1": 0.5}, {"f1": 0.7}, {"f1": 0.6}], Criteria("f1"), 1),  # plain maximum
    ([{"f1": 0.7}, {"f1": 0.7}], Criteria("f1"), 0),  # tie: the earlier wins
    ([{"loss": 0.3}, {"loss": 0.2}, {"loss": 0.2}], Criteria("loss"), 1),  # loss minimised, tie
    ([{"f1": 0.9, "accuracy": 0.8}, {"f1": 0.7, "accuracy": 0.9}],
     Criteria("f1", {"accuracy": 0.9}), 1),  # bound is inclusive
    ([{"f1": 0.9, "loss": 0.6}, {"f1": 0.8, "loss": 0.4}],
     Criteria("f1", maximums={"loss": 0.5}), 1),  # upper bound
    ([{"f1": math.nan}, {"f1": 0.1}], Criteria("f1"), 1),  # NaN never wins
]


@pytest.mark.parametrize(("candidates", "criteria", "expected"), CHOICES)
def test_choose(candidates: list[dict[str, float]], criteria: Criteria, expected: int) -> None:
    assert choose(candidates, criteria) == expected


@pytest.mark.parametrize(("candidates", "criteria", "match"), [
    ([], Criteria("f1"), "no recorded rounds"),
    ([{"f1": 0.9, "accuracy": 0.8}, {"f1": 0.7, "accuracy": 0.85}],
     Criteria("f1", {"accuracy": 0.9}), r"accuracy >= 0.9 .*accuracy 0\.85 \(#1\)"),
    ([{"f1": math.nan}], Criteria("f1"), "f1 never recorded"),
])
def test_choose_infeasible(candidates: list[dict[str, float]], criteria: Criteria,
                           match: str) -> None:
    with pytest.raises(RegistryError, match=match):
        choose(candidates, criteria)


@pytest.mark.parametrize(("metric", "mins", "maxs", "match"), [
    ("f2", [], [], r"unknown metric 'f2'.*did you mean 'f1'"),
    ("f1", ["accuracy"], [], r"--min 'accuracy': expected METRIC=NUMBER"),
    ("f1", ["acuracy=0.9"], [], r"--min: unknown metric 'acuracy'.*did you mean 'accuracy'"),
    ("f1", ["accuracy=high"], [], r"'high' is not a number"),
    ("f1", [], ["loss=inf"], r"--max 'loss=inf': the bound must be finite"),
    ("f1", ["accuracy=0.9", "accuracy=0.8"], [], r"--min accuracy is given twice"),
])
def test_criteria_parse_errors(metric: str, mins: list[str], maxs: list[str], match: str) -> None:
    with pytest.raises(RegistryError, match=match):
        Criteria.parse(metric, mins, maxs)


# Recommendation over the recorded run: a row per criterion.
RECOMMEND = [
    ("f1", [], [], 4),  # best f1 overall
    ("f1", ["accuracy=0.9"], [], 3),  # the paper's example: best F1 with accuracy >= 0.9
    ("f1", ["accuracy=0.87"], [], 2),  # rounds 2 and 3 tie on f1: the earlier round wins
    ("loss", [], [], 3),  # loss is minimised
    ("accuracy", [], ["loss=0.5"], 3),  # an upper bound
    ("precision", ["recall=0.85"], ["loss=0.5"], 2),  # two bounds
]


@pytest.mark.parametrize(("metric", "mins", "maxs", "expected"), RECOMMEND)
def test_recommend_registers_best(recorded: dict[str, Any], metric: str, mins: list[str],
                                  maxs: list[str], expected: int) -> None:
    store: MlflowRoundStore = recorded["store"]
    criteria = Criteria.parse(metric, mins, maxs)
    rec = store.recommend(criteria)
    assert rec.round.server_round == expected
    assert rec.candidates == len(ROUNDS)
    version = store.client.get_model_version_by_alias(EXPERIMENT, BEST_ALIAS)
    assert str(version.version) == rec.version
    assert rec.model_uri == f"models:/{EXPERIMENT}/{rec.version}"
    assert version.tags["round"] == str(expected)
    assert json.loads(version.tags["criteria"]) == criteria.to_dict()
    # Every tag value is JSON (numbers as JSON numbers, never a Python repr).
    assert {k: json.loads(version.tags[f"metric.{k}"]) for k in NAMES} == dict(
        zip(NAMES, ROUNDS[expected], strict=True))
    # The version is an MLflow Model logged by the round's run (a LoggedModel of it).
    source = str(version.source)
    assert version.run_id == rec.round.run_id and source.startswith("models:/m-")
    logged = store.client.get_logged_model(source[len("models:/"):])
    assert (logged.source_run_id, logged.experiment_id) == (
        rec.round.run_id, store.experiment_id())
    assert store.recommend(criteria).version == rec.version  # same answer, no new version


@pytest.mark.parametrize(("mins", "maxs", "match"), [
    (["accuracy=0.95"], [], r"no round meets accuracy >= 0.95 .*accuracy 0\.91 \(round 3\)"),
    (["accuracy=0.9"], ["loss=0.3"],
     r"accuracy >= 0.9, loss <= 0.3 .*accuracy 0\.91 \(round 3\); loss 0\.45 \(round 3\)"),
])
def test_recommend_infeasible_says_best_reached(recorded: dict[str, Any], mins: list[str],
                                                maxs: list[str], match: str) -> None:
    with pytest.raises(RegistryError, match=match):
        recorded["store"].recommend(Criteria.parse("f1", mins, maxs))


def predictions(model: torch.nn.Module) -> torch.Tensor:
    torch.manual_seed(99)
    x = torch.randn(8, 1, SPEC["image_size"], SPEC["image_size"])
    with torch.no_grad():
        return model.eval()(x)


def test_download_round_loads_with_same_predictions(recorded: dict[str, Any],
                                                    tmp_path: Path) -> None:
    store: MlflowRoundStore = recorded["store"]
    path, card_path = store.download(tmp_path / "round2.pt", server_round=2)
    card = json.loads(card_path.read_text())
    assert card_path == tmp_path / "round2.json"
    assert card["round"] == 2 and card["run_id"] == recorded["run_id"]
    assert card["metrics"]["f1"] == ROUNDS[2][4]
    assert card["model_spec"] == {k: str(v) for k, v in SPEC.items()}
    state = torch.load(path, weights_only=True)
    assert state.keys() == recorded["models"][2].state_dict().keys()
    model = load_model(path)
    assert torch.equal(predictions(model), predictions(recorded["models"][2]))
    assert not torch.equal(predictions(model), predictions(recorded["models"][3]))


def test_download_best_carries_criteria_and_mlflow_loads_the_same_model(
        recorded: dict[str, Any], tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import mlflow.pyfunc
    import mlflow.pytorch

    store: MlflowRoundStore = recorded["store"]
    criteria = Criteria.parse("f1", ["accuracy=0.9"])
    store.recommend(criteria)
    path, card_path = store.download(tmp_path, best=True)
    assert path.parent == tmp_path and path.suffix == ".pt"
    card = json.loads(card_path.read_text())
    assert card["round"] == 3 and card["criteria"] == criteria.to_dict()
    assert card["model_version"] is not None
    model = load_model(path)
    assert torch.equal(predictions(model), predictions(recorded["models"][3]))
    # The embedded store serves the same round the MLflow way.
    monkeypatch.setenv("MLFLOW_TRACKING_URI", store.tracking_uri)
    flavor = mlflow.pytorch.load_model(f"models:/{EXPERIMENT}@best")  # exported: no eval()
    torch.manual_seed(99)
    x = torch.randn(8, 1, SPEC["image_size"], SPEC["image_size"])
    with torch.no_grad():
        assert torch.allclose(flavor(x), predictions(model), atol=1e-6)
    served = mlflow.pyfunc.load_model(f"models:/{EXPERIMENT}@best").predict(x.numpy())
    assert torch.allclose(torch.as_tensor(served), predictions(model), atol=1e-6)


@pytest.mark.parametrize(("kwargs", "match"), [
    ({"server_round": 9}, r"no recorded round 9 \(recorded rounds: 0, 1, 2, 3, 4\)"),
    ({"server_round": 1, "run_id": "nosuchrun"}, r"unknown run 'nosuchrun'"),
    ({}, r"give exactly one of a round and best"),
])
def test_download_bad_input(recorded: dict[str, Any], tmp_path: Path, kwargs: dict[str, Any],
                            match: str) -> None:
    with pytest.raises(RegistryError, match=match):
        recorded["store"].download(tmp_path / "m.pt", **kwargs)
    assert list(tmp_path.iterdir()) == []


def test_downloaded_file_corrupt_or_missing(recorded: dict[str, Any], tmp_path: Path) -> None:
    path, card_path = recorded["store"].download(tmp_path / "m.pt", server_round=1)
    card = json.loads(card_path.read_text())
    card_path.write_text(json.dumps({**card, "model_spec": {**SPEC, "width": 8}}))
    with pytest.raises(RegistryError, match=r"m\.pt does not fit model .*'width': 8"):
        load_model(path)
    card_path.write_text(json.dumps(card))
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))
    with pytest.raises(RegistryError, match=r"m\.pt is corrupt \(SHA-256 differs"):
        load_model(path)
    path.write_bytes(b"not a torch file")  # digest unknown: torch itself must refuse it
    with pytest.raises(RegistryError, match=r"m\.pt cannot be loaded by torch"):
        load_checkpoint(path)
    path.unlink()
    with pytest.raises(RegistryError, match=r"m\.pt does not exist"):
        load_model(path)
    card_path.unlink()
    with pytest.raises(RegistryError, match=r"model card .*m\.json does not exist"):
        load_model(path)


def test_checkpoint_corrupt_or_missing_in_store(recorded: dict[str, Any], tmp_path: Path) -> None:
    store = open_store(recorded["location"], "fedcloud-damaged")  # same database, own run
    run_id, _ = record_run(store, [0, 1])
    artifacts = Path(recorded["location"]) / "artifacts" / run_id / "artifacts" / "rounds"
    (artifacts / "round-0001" / "model.pt").write_bytes(b"\x00" * 64)
    with pytest.raises(RegistryError, match=r"model\.pt is corrupt \(SHA-256 differs"):
        store.download(tmp_path / "m.pt", server_round=1)
    (artifacts / "round-0001" / "model.pt").unlink()
    with pytest.raises(RegistryError, match=r"fetching the checkpoint of round 1 .* failed"):
        store.download(tmp_path / "m.pt", server_round=1)
    assert list(tmp_path.iterdir()) == []
    assert store.download(tmp_path / "ok.pt", server_round=0)[0].is_file()


@pytest.mark.parametrize("failing", ["tmpdir", "log_artifacts", "log_batch", "set_tag"])
def test_failed_round_leaves_previous_rounds_usable(recorded: dict[str, Any], tmp_path: Path,
                                                    monkeypatch: pytest.MonkeyPatch,
                                                    failing: str) -> None:
    from mlflow.exceptions import MlflowException

    store = open_store(recorded["location"], f"fedcloud-fail-{failing}")
    run_id = store.start_run("r", SPEC, {"stack": STACK})
    for n in (0, 1):
        store.log_round(record(n), build_model(SPEC).state_dict())

    def broken(*args: Any, **kwargs: Any) -> None:
        if failing == "tmpdir":
            raise OSError(28, "disk I/O error")
        raise MlflowException("disk I/O error")

    with monkeypatch.context() as patch:
        if failing == "tmpdir":  # the local copy of the checkpoint cannot be written
            patch.setattr("fl.app.store.tempfile.TemporaryDirectory", broken)
        else:  # the store fails at one of the three steps of a round
            patch.setattr(store.client, failing, broken)
        with pytest.raises(RegistryError, match=r"recording round 2 of run .* disk I/O error"):
            store.log_round(record(2), build_model(SPEC).state_dict())
    assert [r.server_round for r in store.run(run_id).rounds] == [0, 1]
    assert store.download(tmp_path / "m.pt", server_round=1)[0].is_file()
    store.log_round(record(2), build_model(SPEC).state_dict())  # the retry succeeds
    store.end_run("FAILED")
    assert [r.server_round for r in store.run(run_id).rounds] == [0, 1, 2]


@pytest.mark.parametrize(("call", "match"), [
    (lambda s: s.log_round(record(0), {}), r"log_round was called before start_run"),
    (lambda s: s.end_run("FINISHED"), r"end_run was called before start_run"),
    (lambda s: s.end_run("DONE"), r"unknown run status 'DONE'"),
    (lambda s: s.run("feedbeef"), r"unknown run 'feedbeef'"),
])
def test_store_misuse(recorded: dict[str, Any], call: Any, match: str) -> None:
    with pytest.raises(RegistryError, match=match):
        call(open_store(recorded["location"], EXPERIMENT))


def test_log_round_rejects_incomplete_record(recorded: dict[str, Any]) -> None:
    store = open_store(recorded["location"], "fedcloud-incomplete")
    store.start_run("r", SPEC, {})
    with pytest.raises(RegistryError, match=r"round 1 lacks metric\(s\) precision, f1"):
        store.log_round(RoundRecord(1, {"loss": 1.0, "accuracy": 0.5, "recall": 0.1}), {})
    with pytest.raises(RegistryError, match=r"state_dict entry 'w' is a object"):
        store.log_round(record(1), {"w": object()})
    store.end_run("KILLED")


def test_reading_an_absent_store_creates_nothing(tmp_path: Path) -> None:
    store = open_store(str(tmp_path / "none"), EXPERIMENT)
    with pytest.raises(RegistryError, match=r"no model store at .*mlflow\.db"):
        store.runs()
    assert not (tmp_path / "none").exists()


@pytest.mark.parametrize(("location", "uri", "artifacts"), [
    ("/srv/reg", "sqlite:////srv/reg/mlflow.db", "file:///srv/reg/artifacts"),
    ("sqlite:////srv/x/m.db", "sqlite:////srv/x/m.db", "file:///srv/x/artifacts"),
    ("http://127.0.0.1:5000", "http://127.0.0.1:5000", None),
])
def test_resolve_store(location: str, uri: str, artifacts: str | None) -> None:
    assert resolve_store(location) == (uri, artifacts)


def test_plot_is_a_png(recorded: dict[str, Any], tmp_path: Path) -> None:
    out = recorded["store"].plot(tmp_path / "metrics.png")
    data = out.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    width, height = struct.unpack(">II", data[16:24])
    with Image.open(BytesIO(data)) as image:
        image.load()
        assert image.format == "PNG" and image.size == (width, height)
        assert image.size[0] > image.size[1] > 100
    with pytest.raises(RegistryError, match=r"the plot is written as PNG"):
        recorded["store"].plot(tmp_path / "metrics.jpg")


# The CLI over the same store, through the stack file: a row per command.
def test_cli_list_best_download_plot(recorded: dict[str, Any], tmp_path: Path,
                                     capsys: pytest.CaptureFixture[str]) -> None:
    cfg = ["--config", str(recorded["stack_file"])]
    assert main(["models", "list", *cfg, "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert [r["round"] for r in rows] == sorted(ROUNDS)
    assert main(["models", "list", *cfg, "--run", recorded["run_id"][:8]]) == 0
    assert "hospital" not in capsys.readouterr().out  # the table shows counts, not names
    assert main(["models", "best", *cfg, "--metric", "f1", "--min", "accuracy=0.9",
                 "--json"]) == 0
    best = json.loads(capsys.readouterr().out)
    assert (best["round"], best["alias"], best["criteria"]["min"]) == (3, "best",
                                                                      {"accuracy": 0.9})
    assert best["model_uri"] == f"models:/{EXPERIMENT}@best"
    assert main(["models", "download", *cfg, "--best", "--out", str(tmp_path / "b.pt")]) == 0
    assert json.loads((tmp_path / "b.json").read_text())["round"] == 3
    assert main(["models", "plot", *cfg, "--out", str(tmp_path / "p.png")]) == 0
    assert (tmp_path / "p.png").read_bytes()[:4] == b"\x89PNG"


@pytest.mark.parametrize(("argv", "match"), [
    (["best", "--metric", "f2"], r"unknown metric 'f2'.*did you mean 'f1'"),
    (["best", "--metric", "f1", "--min", "accuracy=0.99"], r"best reached .*accuracy 0\.91"),
    (["list", "--run", "nosuchrun"], r"unknown run 'nosuchrun'"),
    (["download", "--round", "7", "--out", "x.pt"], r"no recorded round 7"),
    (["download", "--round", "-1", "--out", "x.pt"], r"--round -1: rounds start at 0"),
])
def test_cli_errors_are_one_line(recorded: dict[str, Any], capsys: pytest.CaptureFixture[str],
                                 argv: list[str], match: str) -> None:
    assert main(["models", argv[0], "--config", str(recorded["stack_file"]), *argv[1:]]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "To fix:" in err
    assert re.search(match, err), err
