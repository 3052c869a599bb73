"""The app's round writer fails with the app's own error; the operator's store with RegistryError.

No MLflow import is needed for these checks: every one fails before the first store call.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from fedcloud.core.errors import RegistryError
from fl.app.errors import AppError
from fl.app.records import RoundRecord
from fl.app.store import MlflowRoundWriter, open_writer, resolve_store, round_key, round_tag
from fl.registry.store import MlflowRoundStore, open_store
from fl.registry.store import resolve_store as registry_resolve_store


def test_app_error_reads_like_the_project_errors() -> None:
    err = AppError("the thing failed.", "do this.")
    assert str(err) == "the thing failed. To fix: do this."
    assert (err.message, err.fix) == ("the thing failed.", "do this.")
    assert str(AppError("only a message.")) == "only a message."
    assert isinstance(err, RuntimeError)


@pytest.mark.parametrize(("location", "uri", "artifacts"), [
    # a directory: the embedded store, SQLite and artifacts inside it
    ("/srv/store", "sqlite:////srv/store/mlflow.db", "file:///srv/store/artifacts"),
    # a SQLite URI: artifacts next to the database
    ("sqlite:////srv/db/x.db", "sqlite:////srv/db/x.db", "file:///srv/db/artifacts"),
    # a tracking server decides where artifacts go
    ("http://127.0.0.1:5000", "http://127.0.0.1:5000", None),
])
def test_store_locations(location: str, uri: str, artifacts: str | None) -> None:
    assert resolve_store(location) == (uri, artifacts)


def test_round_names_are_zero_padded() -> None:
    assert (round_key(7), round_tag(12)) == ("round-0007", "fedcloud.round.0012")


def test_writer_raises_app_errors(tmp_path: Path) -> None:
    with pytest.raises(AppError, match="the model registry location is empty"):
        resolve_store("  ")
    with pytest.raises(AppError, match="the experiment name is empty"):
        open_writer(tmp_path, " ")
    with pytest.raises(AppError, match="location is empty"):
        MlflowRoundWriter("", "fedcloud-x")
    writer = open_writer(tmp_path, "fedcloud-x")
    record = RoundRecord(1, {"loss": 1.0})
    with pytest.raises(AppError, match="log_round was called before start_run"):
        writer.log_round(record, {})
    writer.active_run_id = "r1"  # past the first check: the record itself is refused
    with pytest.raises(AppError, match=r"round 1 lacks metric\(s\) accuracy, precision"):
        writer.log_round(record, {})
    with pytest.raises(AppError, match="unknown run status 'DONE'"):
        writer.end_run("DONE")
    with pytest.raises(AppError, match=r"no model store at .*mlflow\.db"):
        writer.experiment_id()
    assert not (tmp_path / "mlflow.db").exists()  # reading never creates a store


def test_operator_store_raises_registry_errors_for_the_same_failures(tmp_path: Path) -> None:
    with pytest.raises(RegistryError, match="the model registry location is empty"):
        registry_resolve_store("")
    with pytest.raises(RegistryError, match="location is empty"):
        MlflowRoundStore("", "fedcloud-x")
    with pytest.raises(RegistryError, match="the experiment name is empty"):
        open_store(tmp_path, "")
    store = open_store(tmp_path, "fedcloud-x")
    with pytest.raises(RegistryError, match="end_run was called before start_run"):
        store.end_run("FINISHED")
    with pytest.raises(RegistryError, match="no model store at"):
        store.runs()
