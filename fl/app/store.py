"""The round writer: what the ServerApp records in MLflow after every round (it ships in the FAB).

It defines the Model Manager's format (``fl.registry`` reads it back): run params and tags,
per-round metrics (step = round) and artifacts, and the commit tag ``fedcloud.round.NNNN`` (the
checkpoint's SHA-256) written last.
MLflow's telemetry is switched off before its first import (:data:`MLFLOW_QUIET_ENV`).
See fl/README.md, "What is recorded" and "No phoning home".
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import tempfile
import time
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

from fl.app.errors import AppError
from fl.app.records import METRICS, RoundRecord

if TYPE_CHECKING:
    import torch
    from mlflow.tracking import MlflowClient

# MLflow 3.x posts usage telemetry unless one of these is set (mlflow/telemetry/utils.py,
# checked 2026-11 against mlflow 3.17); the progress bar only clutters logs.
MLFLOW_QUIET_ENV: dict[str, str] = {
    "MLFLOW_DISABLE_TELEMETRY": "true",
    "DO_NOT_TRACK": "true",
    "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR": "false",
}

DB_FILE = "mlflow.db"
ARTIFACTS_DIR = "artifacts"
ROUND_TAG_PREFIX = "fedcloud.round."
ROUNDS_ARTIFACT_DIR = "rounds"
CHECKPOINT_FILE = "model.pt"
ROUND_FILE = "round.json"
EXPERIMENT_TAG = "fedcloud.experiment"
# The experiment tag the MLflow 3 UI reads to open an experiment on runs and charts (machine
# learning) rather than on traces (GenAI): `ExperimentKind.CUSTOM_MODEL_DEVELOPMENT` in the UI
# bundle (mlflow/server/js/build/static/js, "mlflow.experimentKind"), documented in
# mlflow/assistant/skills/mlflow-onboarding/SKILL.md; checked against mlflow 3.17.2.
EXPERIMENT_KIND_TAG = "mlflow.experimentKind"
EXPERIMENT_KIND = "custom_model_development"
# Per-client metrics: client/<participant>/<figure>, round-level ones round/<figure> (the MLflow
# UI groups charts by the prefix before the first "/").
CLIENT_METRIC_PREFIX = "client/"
ROUND_METRIC_PREFIX = "round/"
# Run tag: every participant seen in the run's rounds so far (comma-separated, sorted).
PARTICIPANTS_TAG = "fedcloud.participants"
# Run params the checkpoint needs to be rebuilt (fl.app.task.build_model's spec).
MODEL_SPEC_KEYS: tuple[str, ...] = ("model", "width", "image_size", "num_classes")
RUN_STATUSES: tuple[str, ...] = ("FINISHED", "FAILED", "KILLED")
# MLflow rejects param values over 6000 characters (mlflow/utils/validation.py).
PARAM_MAX_CHARS = 6000

_KEY_UNSAFE = re.compile(r"[^A-Za-z0-9_\-. /]")


def quiet_mlflow_here() -> None:
    """Switch MLflow's telemetry off in this process (before MLflow is first imported)."""
    os.environ.update(MLFLOW_QUIET_ENV)


# Before anything in this process can import MLflow through this module (the ServerApp, the CLI,
# the Pulumi providers all do): setting them later could miss a telemetry client started on import.
quiet_mlflow_here()


def round_key(server_round: int) -> str:
    """Return the artifact directory name of a round (``round-NNNN``)."""
    return f"round-{server_round:04d}"


def round_tag(server_round: int) -> str:
    """Return the commit marker tag of a round (``fedcloud.round.NNNN``)."""
    return f"{ROUND_TAG_PREFIX}{server_round:04d}"


def safe_key(text: str) -> str:
    """Return ``text`` as a valid MLflow metric/param/model name."""
    return _KEY_UNSAFE.sub("_", text)[:200] or "_"


def sha256_file(path: Path) -> str:
    """Return the hex SHA-256 of a file."""
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _param_value(value: Any) -> str:
    text = value if isinstance(value, str) else json.dumps(value, sort_keys=True, default=str)
    return text if len(text) <= PARAM_MAX_CHARS else text[:PARAM_MAX_CHARS - 3] + "..."


def resolve_store(location: str | Path) -> tuple[str, str | None]:
    """Return ``(tracking_uri, artifact_location)`` for a store location.

    Args:
        location: A directory (the embedded store: SQLite + artifacts inside it), a
            ``sqlite:///`` URI (artifacts in ``artifacts/`` next to the database), or any other
            tracking URI (``http://127.0.0.1:5000``: the server decides where artifacts go).

    Raises:
        AppError: The location is empty.
    """
    text = str(location).strip()
    if not text:
        raise AppError("the model registry location is empty.",
                       "set fedcloud:registry.trackingUri, or leave it empty in the stack "
                       "to use the embedded store under the state directory.")
    if text.startswith("sqlite:///"):
        db = Path(text[len("sqlite:///"):])
        return text, (db.parent / ARTIFACTS_DIR).resolve().as_uri()
    if "://" in text:
        return text, None
    root = Path(text).expanduser().resolve()
    return f"sqlite:///{root / DB_FILE}", (root / ARTIFACTS_DIR).as_uri()


class MlflowRoundWriter:
    """An MLflow-backed :class:`fl.app.records.RoundStore`: one run, its rounds committed in turn.

    Args:
        location: See :func:`resolve_store`.
        experiment: The MLflow experiment name, ``fedcloud-<stack>``.

    Attributes:
        error: The exception class raised for every failure (``(message, fix)`` arguments);
            :class:`fl.app.errors.AppError` here, the operator's own class in ``fl.registry``.
    """

    error: ClassVar[type[Exception]] = AppError

    def __init__(self, location: str | Path, experiment: str) -> None:
        if not experiment.strip():
            raise self.error("the experiment name is empty.", "pass fedcloud-<stack>.")
        try:
            self.tracking_uri, self.artifact_location = resolve_store(location)
        except AppError as exc:
            raise self.error(exc.message, exc.fix) from None
        self.experiment = experiment
        self.active_run_id: str | None = None
        self._client: MlflowClient | None = None
        self._experiment_id: str | None = None
        self._participants: dict[str, set[str]] = {}

    @property
    def embedded_db(self) -> Path | None:
        """The SQLite file of an embedded store (None for a tracking server)."""
        if self.tracking_uri.startswith("sqlite:///"):
            return Path(self.tracking_uri[len("sqlite:///"):])
        return None

    @property
    def client(self) -> MlflowClient:
        """The MLflow client (created on first use; creates the embedded store's directory)."""
        if self._client is None:
            if self.embedded_db is not None:
                self.embedded_db.parent.mkdir(parents=True, exist_ok=True)
            quiet_mlflow_here()
            from mlflow.tracking import MlflowClient

            self._client = MlflowClient(tracking_uri=self.tracking_uri,
                                        registry_uri=self.tracking_uri)
        return self._client

    @contextlib.contextmanager
    def mlflow_errors(self, action: str, fix: str) -> Iterator[None]:
        """Turn MLflow and I/O failures inside the block into one-line :attr:`error` exceptions."""
        from mlflow.exceptions import MlflowException

        try:
            yield
        except MlflowException as exc:
            first = str(exc.message).strip().splitlines()[0][:300]
            raise self.error(f"{action} failed at {self.tracking_uri}: {first}.", fix) from None
        except OSError as exc:
            raise self.error(f"{action} failed at {self.tracking_uri}: {exc}.", fix) from None

    def experiment_id(self, create: bool = False) -> str:
        """Return the experiment's id, creating it when ``create`` is set.

        Raises:
            error: The experiment does not exist (and ``create`` is false).
        """
        if self._experiment_id is not None:
            return self._experiment_id
        db = self.embedded_db
        if not create and db is not None and not db.is_file():
            # Reading must not create an empty store (and take seconds doing it).
            raise self.error(f"no model store at {db}: nothing has been recorded yet.",
                             "train first (fedcloud up), or check --stack / "
                             "fedcloud:registry.trackingUri.")
        with self.mlflow_errors("opening the experiment",
                                "check fedcloud:registry.trackingUri and that the store is up."):
            found = self.client.get_experiment_by_name(self.experiment)
            if found is None and create:
                self._experiment_id = self.client.create_experiment(
                    self.experiment, artifact_location=self.artifact_location,
                    tags={EXPERIMENT_KIND_TAG: EXPERIMENT_KIND})
                self._retire_default_experiment()
            elif found is None:
                raise self.error(
                    f"no runs recorded yet: experiment '{self.experiment}' does not exist in "
                    f"{self.tracking_uri}.", "train first (fedcloud up), or check --stack.")
            else:
                self._experiment_id = str(found.experiment_id)
                if create and found.tags.get(EXPERIMENT_KIND_TAG) != EXPERIMENT_KIND:
                    # An experiment made before the tag existed: the UI opens it on traces.
                    self.client.set_experiment_tag(self._experiment_id, EXPERIMENT_KIND_TAG,
                                                   EXPERIMENT_KIND)
        assert self._experiment_id is not None
        return self._experiment_id

    def _retire_default_experiment(self) -> None:
        """Soft-delete the empty "Default" experiment of an embedded store (hidden in the UI).

        MLflow's SQL store inserts experiment 0 "Default" whenever it opens a database without
        one (``SqlAlchemyStore.__init__`` -> ``_create_default_experiment``), so it cannot be
        avoided; a deleted one is kept and not re-inserted. Nothing here logs into it; a
        tracking server's own Default experiment is never touched, nor one that holds runs.
        """
        from mlflow.entities import ViewType
        from mlflow.exceptions import MlflowException

        if self.embedded_db is None:
            return
        try:
            default = self.client.get_experiment("0")
        except MlflowException:
            return
        if default.lifecycle_stage != "active":
            return
        if not self.client.search_runs(["0"], run_view_type=ViewType.ALL, max_results=1):
            self.client.delete_experiment("0")

    def start_run(self, run_name: str, params: Mapping[str, Any], tags: Mapping[str, str]) -> str:
        """Open a run with its parameters and tags; return the MLflow run id.

        Args:
            run_name: A readable name (e.g. ``<stack>-<flower run id>``).
            params: Run config, model spec (:data:`MODEL_SPEC_KEYS`) and aggregator choice, each
                once under one name; values are stored as strings (JSON for non-strings).
            tags: ``stack``, ``flower_run_id`` and any others.
        """
        from mlflow.entities import Param

        exp_id = self.experiment_id(create=True)
        with self.mlflow_errors("starting a run", "check the store location and retry."):
            all_tags = {str(k): str(v) for k, v in tags.items()}
            all_tags[EXPERIMENT_TAG] = self.experiment
            run = self.client.create_run(exp_id, run_name=run_name, tags=all_tags)
            run_id = str(run.info.run_id)
            batch = [Param(safe_key(str(k)), _param_value(v)) for k, v in params.items()]
            for start in range(0, len(batch), 100):
                self.client.log_batch(run_id, params=batch[start:start + 100])
        self.active_run_id = run_id
        return run_id

    def reopen_run(self, run_id: str, tags: Mapping[str, str]) -> None:
        """Make an unfinished run active again (status ``RUNNING``) to record more rounds.

        Raises:
            error: The run does not exist or the store failed.
        """
        from mlflow.entities import RunTag

        with self.mlflow_errors(f"reopening run {run_id}", "check the store location."):
            seen = self.client.get_run(run_id).data.tags.get(PARTICIPANTS_TAG, "")
            self.client.update_run(run_id, status="RUNNING")
            self.client.log_batch(run_id, tags=[RunTag(str(k), str(v)) for k, v in tags.items()])
        self._participants[run_id] = {p for p in str(seen).split(",") if p}
        self.active_run_id = run_id

    def log_round(self, record: RoundRecord, state_dict: Mapping[str, Any]) -> None:
        """Record one round's metrics and checkpoint; the round becomes visible only when complete.

        Raises:
            error: No run is open, a metric is missing, or the store failed (the round is then
                not recorded; earlier rounds are untouched).
        """
        run_id = self.active_run_id
        if run_id is None:
            raise self.error("log_round was called before start_run.",
                             "call start_run(run_name, params, tags) first.")
        n = record.server_round
        if isinstance(n, bool) or not isinstance(n, int) or n < 0:
            raise self.error(f"server_round must be a whole number >= 0, got {n!r}.",
                             "pass the Flower server round (0 for the initial model).")
        missing = [m for m in METRICS if m not in record.metrics]
        if missing:
            raise self.error(f"round {n} lacks metric(s) {', '.join(missing)}.",
                             f"report all of {', '.join(METRICS)} from the evaluation.")
        metrics = {str(k): float(v) for k, v in record.metrics.items()}
        tensors = self._to_tensors(state_dict)
        try:
            self._log_round_files(run_id, n, record, metrics, tensors)
        except OSError as exc:  # the local temporary copy (disk full, no /tmp)
            raise self.error(f"recording round {n} of run {run_id} failed: {exc}.",
                             "free disk space; earlier rounds are intact.") from None

    def _to_tensors(self, state_dict: Mapping[str, Any]) -> dict[str, torch.Tensor]:
        import torch

        out: dict[str, torch.Tensor] = {}
        for key, value in state_dict.items():
            if isinstance(value, torch.Tensor):
                out[str(key)] = value.detach().cpu().clone()
                continue
            try:
                out[str(key)] = torch.as_tensor(value).clone()
            except (TypeError, ValueError, RuntimeError) as exc:
                raise self.error(
                    f"state_dict entry '{key}' is a {type(value).__name__}, not a tensor ({exc}).",
                    "pass the global model's state_dict (tensors or numpy arrays).") from None
        return out

    def _log_round_files(self, run_id: str, n: int, record: RoundRecord,
                         metrics: Mapping[str, float], tensors: Mapping[str, Any]) -> None:
        import torch

        with tempfile.TemporaryDirectory(prefix="fedcloud-round-") as tmp:
            local = Path(tmp) / round_key(n)
            local.mkdir()
            torch.save(tensors, local / CHECKPOINT_FILE)
            detail = {
                "server_round": n, "run_id": run_id, "metrics": metrics,
                "per_client": [dict(c) for c in record.per_client],
                "confusion": [list(row) for row in record.confusion],
                "extra": dict(record.extra), "sha256": sha256_file(local / CHECKPOINT_FILE),
            }
            (local / ROUND_FILE).write_text(json.dumps(detail, indent=2, default=str),
                                            encoding="utf-8")
            self.commit_round_dir(run_id, local)

    def _read_round_dir(self, local: Path) -> tuple[int, dict[str, float], list[dict[str, Any]],
                                                    dict[str, Any], str]:
        try:
            detail = json.loads((local / ROUND_FILE).read_text(encoding="utf-8"))
            n = int(detail["server_round"])
            metrics = {str(k): float(v) for k, v in detail["metrics"].items()}
            per_client = [dict(c) for c in detail.get("per_client", [])]
            digest = str(detail["sha256"])
        except (OSError, ValueError, KeyError, TypeError, AttributeError):
            raise self.error(f"{local / ROUND_FILE} is missing or malformed.",
                             "pull the store again; the round cannot be recorded.") from None
        if sha256_file(local / CHECKPOINT_FILE) != digest:
            raise self.error(f"{local / CHECKPOINT_FILE} is corrupt (SHA-256 differs from "
                             f"{ROUND_FILE}).", "pull the store again.")
        extra = detail.get("extra") if isinstance(detail.get("extra"), dict) else {}
        return n, metrics, per_client, extra, digest

    def commit_round_dir(self, run_id: str, local: Path) -> dict[str, Any]:
        """Record a round from a directory holding ``model.pt`` and ``round.json``.

        Order: artifacts, then metrics, then the commit marker tag (last), so a failure at any
        point leaves the round invisible and the earlier rounds intact. Used by
        :meth:`log_round` and by the import of a pulled store on the operator's side.

        Returns:
            What was committed (``metrics``, ``checkpoint``, ``sha256``, ``participants``).

        Raises:
            error: ``round.json`` is malformed, the checkpoint's digest differs from it, or the
                store failed.
        """
        from mlflow.entities import RunTag

        n, metrics, per_client, extra, digest = self._read_round_dir(local)
        participants = [str(c.get("participant") or c.get("node_id") or f"client{i}")
                        for i, c in enumerate(per_client)]
        batch = _round_metrics(n, metrics, participants, per_client, extra)
        artifact_dir = f"{ROUNDS_ARTIFACT_DIR}/{round_key(n)}"
        marker = {"metrics": metrics, "checkpoint": f"{artifact_dir}/{CHECKPOINT_FILE}",
                  "sha256": digest, "participants": participants}
        with self.mlflow_errors(f"recording round {n} of run {run_id}",
                                "check the store (disk space, server reachable); earlier rounds "
                                "are intact and training can go on."):
            self.client.log_artifacts(run_id, str(local), artifact_path=artifact_dir)
            seen = self._participants.setdefault(run_id, set())
            seen.update(participants)
            tags = [RunTag(PARTICIPANTS_TAG, ",".join(sorted(seen)))]
            for start in range(0, len(batch), 1000):
                self.client.log_batch(run_id, metrics=batch[start:start + 1000], tags=tags)
            # The commit marker, last: readers ignore rounds (and their metrics) without it.
            self.client.set_tag(run_id, round_tag(n), digest)
        return marker

    def end_run(self, status: str) -> None:
        """Close the active run with ``FINISHED``, ``FAILED`` or ``KILLED``.

        Raises:
            error: No run is open, or the status is not one of those.
        """
        if status not in RUN_STATUSES:
            raise self.error(f"unknown run status '{status}'.",
                             f"use one of: {', '.join(RUN_STATUSES)}.")
        if self.active_run_id is None:
            raise self.error("end_run was called before start_run.",
                             "call start_run(run_name, params, tags) first.")
        with self.mlflow_errors(f"closing run {self.active_run_id}", "retry end_run."):
            self.client.set_terminated(self.active_run_id, status=status)
        self.active_run_id = None


def _round_metrics(n: int, metrics: Mapping[str, float], participants: list[str],
                   per_client: list[dict[str, Any]], extra: Mapping[str, Any]) -> list[Any]:
    """Return the MLflow metrics of round ``n``: global, per client and round-level figures."""
    from mlflow.entities import Metric

    now = int(time.time() * 1000)
    batch = [Metric(safe_key(k), v, now, n) for k, v in metrics.items()]
    for name, figures in zip(participants, per_client, strict=True):
        for key, value in figures.items():
            if key in ("participant", "node_id") or isinstance(value, bool):
                continue
            if isinstance(value, int | float):
                key_name = safe_key(f"{CLIENT_METRIC_PREFIX}{name}/{key}")
                batch.append(Metric(key_name, float(value), now, n))
    for key, value in extra.items():
        # Round-level figures (train time, nodes): metrics too, for the MLflow UI's charts.
        if isinstance(value, int | float) and not isinstance(value, bool):
            batch.append(Metric(safe_key(f"{ROUND_METRIC_PREFIX}{key}"), float(value), now, n))
    batch.append(Metric(f"{ROUND_METRIC_PREFIX}participants", float(len(participants)), now, n))
    return batch


def open_writer(location: str | Path, experiment: str) -> MlflowRoundWriter:
    """Return the round store the ServerApp writes to.

    Args:
        location: A tracking URI (``sqlite:///...``, ``http://127.0.0.1:5000``) or a directory
            for the embedded store (see :func:`resolve_store`).
        experiment: ``fedcloud-<stack>``.
    """
    return MlflowRoundWriter(location, experiment)
