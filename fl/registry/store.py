"""Model Manager: every round's global model recorded in MLflow, the best one recommended.

One MLflow experiment per stack (``fedcloud-<stack>``) holds one MLflow run per training run:

* run parameters: the run config, the model spec (``model``, ``width``, ``image_size``,
  ``num_classes``) and the aggregator choice, as passed to :meth:`MlflowRoundStore.start_run`;
* run tags: stack, Flower run id (as passed), ``fedcloud.experiment`` and
  ``fedcloud.core.participants`` (every participant evaluated so far, updated with each round);
* per round N: the five :data:`fl.app.records.METRICS` and per-client figures as MLflow metrics at
  ``step=N`` (``client/<participant>/<metric>``), and the artifacts ``rounds/round-NNNN/model.pt``
  (the global ``state_dict``, ``torch.save``) and ``rounds/round-NNNN/round.json`` (metrics,
  per-client figures, confusion matrix, checkpoint SHA-256);
* the *commit marker* of round N: the tag ``fedcloud.round.NNNN`` (JSON: metrics, checkpoint path
  and SHA-256, participants), written last in one call. Readers only see rounds that have it, so
  a failure while logging a round leaves the previous rounds complete and usable, and a checkpoint
  is verified against its recorded SHA-256 before it is loaded.

The recommended round is registered in the MLflow model registry as a version of the registered
model named after the experiment, with the alias ``best`` and the criteria as version tags.

The default store is embedded: SQLite (``<state dir>/registry/mlflow.db``) plus a local artifact
directory (``<state dir>/registry/artifacts``). A remote tracking URI (``http://...`` of an
``mlflow server``) works the same way. MLflow is imported lazily (it takes seconds) and its
telemetry is switched off before the first import (:data:`MLFLOW_QUIET_ENV`).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import os
import re
import tempfile
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from fedcloud.core.errors import RegistryError
from fl.app.records import METRICS, RoundRecord
from fl.registry.criteria import Criteria, choose

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
BEST_ALIAS = "best"
CARD_FORMAT = "fedcloud-model-card/1"
# Run params the checkpoint needs to be rebuilt (fl.app.task.build_model's spec).
MODEL_SPEC_KEYS: tuple[str, ...] = ("model", "width", "image_size", "num_classes")
RUN_STATUSES: tuple[str, ...] = ("FINISHED", "FAILED", "KILLED")
# Run tag: every participant seen in the run's rounds so far (comma-separated, sorted).
PARTICIPANTS_TAG = "fedcloud.core.participants"

_KEY_UNSAFE = re.compile(r"[^A-Za-z0-9_\-. /]")


def quiet_mlflow_here() -> None:
    """Switch MLflow's telemetry off in this process (before MLflow is first imported)."""
    os.environ.update(MLFLOW_QUIET_ENV)


# Before anything in this process can import MLflow through this module (the ServerApp, the CLI,
# the Pulumi providers all do): setting them later could miss a telemetry client started on import.
quiet_mlflow_here()


def mlflow_env(extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """Return a copy of ``os.environ`` for an MLflow subprocess (``mlflow ui``/``server``)."""
    env = dict(os.environ)
    env.update(MLFLOW_QUIET_ENV)
    if extra:
        env.update(extra)
    return env


def _client_class() -> type[MlflowClient]:
    quiet_mlflow_here()
    from mlflow.tracking import MlflowClient

    return MlflowClient


def resolve_store(location: str | Path) -> tuple[str, str | None]:
    """Return ``(tracking_uri, artifact_location)`` for a store location.

    Args:
        location: A directory (the embedded store: SQLite + artifacts inside it), a
            ``sqlite:///`` URI (artifacts in ``artifacts/`` next to the database), or any other
            tracking URI (``http://127.0.0.1:5000``: the server decides where artifacts go).

    Raises:
        RegistryError: The location is empty.
    """
    text = str(location).strip()
    if not text:
        raise RegistryError("the model registry location is empty.",
                            "set fedcloud:registry.trackingUri, or leave it empty in the stack "
                            "to use the embedded store under the state directory.")
    if text.startswith("sqlite:///"):
        db = Path(text[len("sqlite:///"):])
        return text, (db.parent / ARTIFACTS_DIR).resolve().as_uri()
    if "://" in text:
        return text, None
    root = Path(text).expanduser().resolve()
    return f"sqlite:///{root / DB_FILE}", (root / ARTIFACTS_DIR).as_uri()


def stack_store(raw: Any) -> tuple[str, str]:
    """Return ``(location, experiment)`` of a stack's store.

    Args:
        raw: The stack's :class:`fedcloud.core.config.RawConfig`.

    Raises:
        fedcloud.core.errors.ConfigError: ``fedcloud:registry`` is malformed.
    """
    view = raw.view().sub("registry")
    view.check_keys(["trackingUri"])
    uri = view.data.get("trackingUri") or ""
    if not isinstance(uri, str):
        raise view.error("trackingUri", "must be a string (a URI, or empty for the embedded store)")
    location = uri.strip()
    if not location:
        location = str(raw.state_dir / "registry")
    elif "://" not in location and not Path(location).expanduser().is_absolute():
        # A relative directory is relative to the project, like fedcloud:stateDir.
        from fedcloud.core.config import ROOT

        location = str(ROOT / location)
    return location, f"fedcloud-{raw.stack}"


@dataclass(frozen=True)
class RoundInfo:
    """One committed round of one run.

    Attributes:
        run_id: The MLflow run id.
        server_round: The round number (0 = the initial model).
        metrics: The global metrics of the round.
        checkpoint: Artifact path of the checkpoint within the run.
        sha256: SHA-256 of the checkpoint file.
        participants: Names (or node ids) of the clients evaluated in this round.
    """

    run_id: str
    server_round: int
    metrics: Mapping[str, float]
    checkpoint: str
    sha256: str
    participants: tuple[str, ...] = ()


@dataclass(frozen=True)
class RunInfo:
    """One training run and its committed rounds (ordered by round)."""

    run_id: str
    run_name: str
    status: str
    start_time: int
    params: Mapping[str, str]
    tags: Mapping[str, str]
    rounds: tuple[RoundInfo, ...] = field(default=())

    def round(self, server_round: int) -> RoundInfo:
        """Return round ``server_round``.

        Raises:
            RegistryError: The run has no such committed round.
        """
        for info in self.rounds:
            if info.server_round == server_round:
                return info
        have = ", ".join(str(r.server_round) for r in self.rounds) or "none"
        raise RegistryError(f"run {self.run_id} has no recorded round {server_round} "
                            f"(recorded rounds: {have}).", "pick one of the recorded rounds.")


@dataclass(frozen=True)
class Recommendation:
    """The chosen round and its registered model version."""

    round: RoundInfo
    criteria: Criteria
    model_name: str
    version: str
    candidates: int


def _round_key(server_round: int) -> str:
    return f"round-{server_round:04d}"


def _safe_key(text: str) -> str:
    return _KEY_UNSAFE.sub("_", text)[:200] or "_"


def _param_value(value: Any) -> str:
    text = value if isinstance(value, str) else json.dumps(value, sort_keys=True, default=str)
    # MLflow rejects param values over 6000 characters (mlflow/utils/validation.py).
    return text if len(text) <= 6000 else text[:5997] + "..."


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _write_atomic(path: Path, write: Callable[[Path], object]) -> None:
    """Write ``path`` via a temporary file in the same directory and ``os.replace``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        write(tmp)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def _to_tensors(state_dict: Mapping[str, Any]) -> dict[str, torch.Tensor]:
    import torch

    out: dict[str, torch.Tensor] = {}
    for key, value in state_dict.items():
        if isinstance(value, torch.Tensor):
            out[str(key)] = value.detach().cpu().clone()
        else:
            try:
                out[str(key)] = torch.as_tensor(value).clone()
            except (TypeError, ValueError, RuntimeError) as exc:
                raise RegistryError(
                    f"state_dict entry '{key}' is a {type(value).__name__}, not a tensor ({exc}).",
                    "pass the global model's state_dict (tensors or numpy arrays).") from None
    return out


def load_checkpoint(path: Path, sha256: str | None = None) -> dict[str, torch.Tensor]:
    """Load a checkpoint file into a ``state_dict``, verifying it first.

    Args:
        path: A file written by :meth:`MlflowRoundStore.log_round` or :meth:`download`.
        sha256: The expected digest (from the round record or the card), if known.

    Raises:
        RegistryError: The file is missing, its digest differs, or it is not a state_dict.
    """
    import pickle

    import torch

    if not path.is_file():
        raise RegistryError(f"checkpoint {path} does not exist.",
                            "download it again: fedcloud models download --round N --out PATH.")
    if sha256 is not None and _sha256(path) != sha256:
        raise RegistryError(f"checkpoint {path} is corrupt (SHA-256 differs from the record).",
                            "download it again: fedcloud models download --round N --out PATH.")
    try:
        data = torch.load(path, map_location="cpu", weights_only=True)
    except (RuntimeError, OSError, EOFError, ValueError, pickle.UnpicklingError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise RegistryError(f"checkpoint {path} cannot be loaded by torch ({first}).",
                            "download it again: fedcloud models download --round N --out PATH."
                            ) from None
    if not isinstance(data, dict) or not all(isinstance(v, torch.Tensor) for v in data.values()):
        raise RegistryError(f"checkpoint {path} is not a state_dict of tensors.",
                            "download it again: fedcloud models download --round N --out PATH.")
    return data


class MlflowRoundStore:
    """An MLflow-backed :class:`fl.app.records.RoundStore` plus the Model Manager's queries.

    Args:
        location: See :func:`resolve_store`.
        experiment: The MLflow experiment (and registered model) name, ``fedcloud-<stack>``.
    """

    def __init__(self, location: str | Path, experiment: str) -> None:
        if not experiment.strip():
            raise RegistryError("the experiment name is empty.", "pass fedcloud-<stack>.")
        self.tracking_uri, self.artifact_location = resolve_store(location)
        self.experiment = experiment
        self.model_name = _safe_key(experiment)
        self.active_run_id: str | None = None
        self._client: MlflowClient | None = None
        self._experiment_id: str | None = None
        self._participants: dict[str, set[str]] = {}

    # -- plumbing ---------------------------------------------------------------------------

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
            client_class = _client_class()
            self._client = client_class(tracking_uri=self.tracking_uri,
                                        registry_uri=self.tracking_uri)
        return self._client

    @contextlib.contextmanager
    def mlflow_errors(self, action: str, fix: str) -> Iterator[None]:
        """Turn MLflow and I/O failures inside the block into one-line :class:`RegistryError`."""
        from mlflow.exceptions import MlflowException

        try:
            yield
        except MlflowException as exc:
            first = str(exc.message).strip().splitlines()[0][:300]
            raise RegistryError(f"{action} failed at {self.tracking_uri}: {first}.", fix) from None
        except OSError as exc:
            raise RegistryError(f"{action} failed at {self.tracking_uri}: {exc}.", fix) from None

    def experiment_id(self, create: bool = False) -> str:
        """Return the experiment's id, creating it when ``create`` is set.

        Raises:
            RegistryError: The experiment does not exist (and ``create`` is false).
        """
        if self._experiment_id is not None:
            return self._experiment_id
        db = self.embedded_db
        if not create and db is not None and not db.is_file():
            # Reading must not create an empty store (and take seconds doing it).
            raise RegistryError(f"no model store at {db}: nothing has been recorded yet.",
                                "train first (fedcloud up), or check --stack / "
                                "fedcloud:registry.trackingUri.")
        with self.mlflow_errors("opening the experiment",
                                 "check fedcloud:registry.trackingUri and that the store is up."):
            found = self.client.get_experiment_by_name(self.experiment)
            if found is None and create:
                self._experiment_id = self.client.create_experiment(
                    self.experiment, artifact_location=self.artifact_location)
            elif found is None:
                raise RegistryError(
                    f"no runs recorded yet: experiment '{self.experiment}' does not exist in "
                    f"{self.tracking_uri}.", "train first (fedcloud up), or check --stack.")
            else:
                self._experiment_id = str(found.experiment_id)
        assert self._experiment_id is not None
        return self._experiment_id

    # -- RoundStore (written by the ServerApp) ------------------------------------------------

    def start_run(self, run_name: str, params: Mapping[str, Any], tags: Mapping[str, str]) -> str:
        """Open a run with its parameters and tags; return the MLflow run id.

        Args:
            run_name: A readable name (e.g. ``<stack>-<flower run id>``).
            params: Run config, model spec (``model``, ``width``, ``image_size``,
                ``num_classes``) and aggregator choice; values are stored as strings (JSON for
                non-strings).
            tags: ``stack``, ``flower_run_id``, ``participants`` and any others.
        """
        from mlflow.entities import Param

        exp_id = self.experiment_id(create=True)
        with self.mlflow_errors("starting a run", "check the store location and retry."):
            all_tags = {str(k): str(v) for k, v in tags.items()}
            all_tags["fedcloud.experiment"] = self.experiment
            run = self.client.create_run(exp_id, run_name=run_name, tags=all_tags)
            run_id = str(run.info.run_id)
            batch = [Param(_safe_key(str(k)), _param_value(v)) for k, v in params.items()]
            for start in range(0, len(batch), 100):
                self.client.log_batch(run_id, params=batch[start:start + 100])
        self.active_run_id = run_id
        return run_id

    def log_round(self, record: RoundRecord, state_dict: Mapping[str, Any]) -> None:
        """Record one round's metrics and checkpoint; the round becomes visible only when complete.

        Raises:
            RegistryError: No run is open, a metric is missing, or the store failed (the round is
                then not recorded; earlier rounds are untouched).
        """
        run_id = self.active_run_id
        if run_id is None:
            raise RegistryError("log_round was called before start_run.",
                                "call start_run(run_name, params, tags) first.")
        n = record.server_round
        if isinstance(n, bool) or not isinstance(n, int) or n < 0:
            raise RegistryError(f"server_round must be a whole number >= 0, got {n!r}.",
                                "pass the Flower server round (0 for the initial model).")
        missing = [m for m in METRICS if m not in record.metrics]
        if missing:
            raise RegistryError(f"round {n} lacks metric(s) {', '.join(missing)}.",
                                f"report all of {', '.join(METRICS)} from the evaluation.")
        metrics = {str(k): float(v) for k, v in record.metrics.items()}
        tensors = _to_tensors(state_dict)
        try:
            self._log_round_files(run_id, n, record, metrics, tensors)
        except OSError as exc:  # the local temporary copy (disk full, no /tmp)
            raise RegistryError(f"recording round {n} of run {run_id} failed: {exc}.",
                                "free disk space; earlier rounds are intact.") from None

    def _log_round_files(self, run_id: str, n: int, record: RoundRecord,
                         metrics: Mapping[str, float], tensors: Mapping[str, Any]) -> None:
        import torch

        with tempfile.TemporaryDirectory(prefix="fedcloud-round-") as tmp:
            local = Path(tmp) / _round_key(n)
            local.mkdir()
            torch.save(tensors, local / CHECKPOINT_FILE)
            detail = {
                "server_round": n, "run_id": run_id, "metrics": metrics,
                "per_client": [dict(c) for c in record.per_client],
                "confusion": [list(row) for row in record.confusion],
                "extra": dict(record.extra), "sha256": _sha256(local / CHECKPOINT_FILE),
            }
            (local / ROUND_FILE).write_text(json.dumps(detail, indent=2, default=str),
                                            encoding="utf-8")
            self.commit_round_dir(run_id, local)

    def commit_round_dir(self, run_id: str, local: Path) -> RoundInfo:
        """Record a round from a directory holding ``model.pt`` and ``round.json``.

        Order: artifacts, then metrics, then the commit marker tag (last), so a failure at any
        point leaves the round invisible and the earlier rounds intact. Used by
        :meth:`log_round` and by the import of a pulled store (``fl.registry.sync``).

        Raises:
            RegistryError: ``round.json`` is malformed, the checkpoint's digest differs from
                it, or the store failed.
        """
        from mlflow.entities import Metric, RunTag

        try:
            detail = json.loads((local / ROUND_FILE).read_text(encoding="utf-8"))
            n = int(detail["server_round"])
            metrics = {str(k): float(v) for k, v in detail["metrics"].items()}
            per_client = [dict(c) for c in detail.get("per_client", [])]
            digest = str(detail["sha256"])
        except (OSError, ValueError, KeyError, TypeError, AttributeError):
            raise RegistryError(f"{local / ROUND_FILE} is missing or malformed.",
                                "pull the store again; the round cannot be recorded.") from None
        if _sha256(local / CHECKPOINT_FILE) != digest:
            raise RegistryError(f"{local / CHECKPOINT_FILE} is corrupt (SHA-256 differs from "
                                f"{ROUND_FILE}).", "pull the store again.")
        now = int(time.time() * 1000)
        participants = [str(c.get("participant") or c.get("node_id") or f"client{i}")
                        for i, c in enumerate(per_client)]
        batch = [Metric(_safe_key(k), v, now, n) for k, v in metrics.items()]
        for name, figures in zip(participants, per_client, strict=True):
            for key, value in figures.items():
                if key in ("participant", "node_id") or isinstance(value, bool):
                    continue
                if isinstance(value, int | float):
                    batch.append(Metric(_safe_key(f"client/{name}/{key}"), float(value), now, n))
        extra = detail.get("extra") if isinstance(detail.get("extra"), dict) else {}
        for key, value in extra.items():
            # Round-level figures (train time, nodes): metrics too, for the MLflow UI's charts.
            if isinstance(value, int | float) and not isinstance(value, bool):
                batch.append(Metric(_safe_key(f"round/{key}"), float(value), now, n))
        artifact_dir = f"{ROUNDS_ARTIFACT_DIR}/{_round_key(n)}"
        checkpoint = f"{artifact_dir}/{CHECKPOINT_FILE}"
        marker = {"metrics": metrics, "checkpoint": checkpoint, "sha256": digest,
                  "participants": participants}
        with self.mlflow_errors(f"recording round {n} of run {run_id}",
                                 "check the store (disk space, server reachable); earlier rounds "
                                 "are intact and training can go on."):
            self.client.log_artifacts(run_id, str(local), artifact_path=artifact_dir)
            seen = self._participants.setdefault(run_id, set())
            seen.update(participants)
            tags = [RunTag(PARTICIPANTS_TAG, ",".join(sorted(seen)))]
            for start in range(0, len(batch), 1000):
                self.client.log_batch(run_id, metrics=batch[start:start + 1000], tags=tags)
            # The commit marker, last: readers ignore rounds without it.
            self.client.set_tag(run_id, f"{ROUND_TAG_PREFIX}{n:04d}", json.dumps(marker))
        return RoundInfo(run_id=run_id, server_round=n, metrics=metrics,
                         checkpoint=checkpoint, sha256=digest,
                         participants=tuple(participants))

    def end_run(self, status: str) -> None:
        """Close the active run with ``FINISHED``, ``FAILED`` or ``KILLED``.

        Raises:
            RegistryError: No run is open, or the status is not one of those.
        """
        if status not in RUN_STATUSES:
            raise RegistryError(f"unknown run status '{status}'.",
                                f"use one of: {', '.join(RUN_STATUSES)}.")
        if self.active_run_id is None:
            raise RegistryError("end_run was called before start_run.",
                                "call start_run(run_name, params, tags) first.")
        with self.mlflow_errors(f"closing run {self.active_run_id}", "retry end_run."):
            self.client.set_terminated(self.active_run_id, status=status)
        self.active_run_id = None

    # -- queries ------------------------------------------------------------------------------

    def runs(self) -> list[RunInfo]:
        """Return every run of the experiment, newest first, with its committed rounds."""
        from mlflow.entities import ViewType

        exp_id = self.experiment_id()
        out: list[RunInfo] = []
        with self.mlflow_errors("listing runs", "check the store location."):
            token: str | None = None
            while True:
                page = self.client.search_runs([exp_id], run_view_type=ViewType.ACTIVE_ONLY,
                                               max_results=1000,
                                               order_by=["attributes.start_time DESC"],
                                               page_token=token)
                out.extend(self._run_info(run) for run in page)
                token = page.token
                if not token:
                    break
        return out

    def run(self, run_id: str | None = None) -> RunInfo:
        """Return one run (the newest when ``run_id`` is None).

        Raises:
            RegistryError: No runs, or no run with that id (prefixes of 6+ characters match).
        """
        runs = self.runs()
        if not runs:
            raise RegistryError(f"no runs recorded in experiment '{self.experiment}'.",
                                "train first (fedcloud up), or check --stack.")
        if run_id is None:
            return runs[0]
        matches = [r for r in runs if r.run_id == run_id or
                   (len(run_id) >= 6 and r.run_id.startswith(run_id)) or r.run_name == run_id]
        if len(matches) == 1:
            return matches[0]
        known = ", ".join(f"{r.run_id[:8]} ({r.run_name})" for r in runs[:5])
        if not matches:
            raise RegistryError(f"unknown run '{run_id}' in experiment '{self.experiment}'.",
                                f"use one of: {known} (fedcloud models list shows them all).")
        raise RegistryError(f"run '{run_id}' matches {len(matches)} runs.",
                            "give more characters of the run id.")

    def _run_info(self, run: Any) -> RunInfo:
        rounds = []
        for key, value in run.data.tags.items():
            if not key.startswith(ROUND_TAG_PREFIX):
                continue
            try:
                n = int(key[len(ROUND_TAG_PREFIX):])
                marker = json.loads(value)
                rounds.append(RoundInfo(
                    run_id=run.info.run_id, server_round=n,
                    metrics={k: float(v) for k, v in marker["metrics"].items()},
                    checkpoint=str(marker["checkpoint"]), sha256=str(marker["sha256"]),
                    participants=tuple(str(p) for p in marker.get("participants", ())),
                ))
            except (ValueError, KeyError, TypeError, AttributeError):
                raise RegistryError(
                    f"run {run.info.run_id}: the record of {key} is corrupt.",
                    f"delete the tag {key} in the MLflow UI to drop that round.") from None
        rounds.sort(key=lambda r: r.server_round)
        return RunInfo(run_id=run.info.run_id, run_name=run.info.run_name or "",
                       status=run.info.status, start_time=int(run.info.start_time or 0),
                       params=dict(run.data.params), tags=dict(run.data.tags),
                       rounds=tuple(rounds))

    # -- recommend ----------------------------------------------------------------------------

    def recommend(self, criteria: Criteria, run_id: str | None = None) -> Recommendation:
        """Choose the best round of a run and register it as a model version aliased ``best``.

        Args:
            criteria: What to optimise and the bounds to meet; ties go to the earlier round.
            run_id: The run (default: the newest).

        Raises:
            RegistryError: Unknown run, no rounds, or no round meets the criteria (the message
                gives the best values reached).
        """
        info = self.run(run_id)
        if not info.rounds:
            raise RegistryError(f"run {info.run_id} has no recorded rounds.",
                                "pick a run with rounds (fedcloud models list).")
        index = choose([r.metrics for r in info.rounds], criteria,
                       [f"round {r.server_round}" for r in info.rounds])
        chosen = info.rounds[index]
        version = self._register(info, chosen, criteria)
        return Recommendation(round=chosen, criteria=criteria, model_name=self.model_name,
                              version=version, candidates=len(info.rounds))

    def _register(self, info: RunInfo, chosen: RoundInfo, criteria: Criteria) -> str:
        from mlflow.exceptions import MlflowException

        criteria_json = json.dumps(criteria.to_dict(), sort_keys=True)
        tags = {"run_id": info.run_id, "round": str(chosen.server_round),
                "criteria": criteria_json, "sha256": chosen.sha256,
                **{f"metric.{k}": repr(v) for k, v in chosen.metrics.items()}}
        with self.mlflow_errors("registering the best model", "retry fedcloud models best."):
            try:
                self.client.get_registered_model(self.model_name)
            except MlflowException:
                self.client.create_registered_model(
                    self.model_name, description=f"Global models of {self.experiment}.")
            with contextlib.suppress(MlflowException):
                current = self.client.get_model_version_by_alias(self.model_name, BEST_ALIAS)
                if all(current.tags.get(k) == v for k, v in tags.items()):
                    return str(current.version)
            run = self.client.get_run(info.run_id)
            key = _round_key(chosen.server_round)
            source = f"{run.info.artifact_uri}/{ROUNDS_ARTIFACT_DIR}/{key}"
            version = self.client.create_model_version(
                self.model_name, source=source, run_id=info.run_id, tags=tags,
                description=f"round {chosen.server_round}: {criteria.describe()}",
                await_creation_for=0)
            self.client.set_registered_model_alias(self.model_name, BEST_ALIAS,
                                                   str(version.version))
        return str(version.version)

    def best(self) -> tuple[RunInfo, RoundInfo, dict[str, Any], str]:
        """Return the round aliased ``best``: ``(run, round, criteria, version)``.

        Raises:
            RegistryError: Nothing has been recommended yet.
        """
        from mlflow.exceptions import MlflowException

        self.experiment_id()
        try:
            version = self.client.get_model_version_by_alias(self.model_name, BEST_ALIAS)
        except MlflowException:
            raise RegistryError(f"no model of '{self.experiment}' is marked best yet.",
                                "run: fedcloud models best --metric f1 [--min accuracy=0.9]."
                                ) from None
        info = self.run(version.tags["run_id"])
        chosen = info.round(int(version.tags["round"]))
        return info, chosen, json.loads(version.tags.get("criteria", "{}")), str(version.version)

    # -- download -----------------------------------------------------------------------------

    def download(self, out: str | Path, server_round: int | None = None, best: bool = False,
                 run_id: str | None = None) -> tuple[Path, Path]:
        """Write a round's checkpoint (torch-loadable ``state_dict``) and its JSON card.

        Args:
            out: The checkpoint file to write (``model.pt``); the card goes next to it with the
                suffix ``.json``. An existing directory gets ``<experiment>-round-N.pt`` inside.
            server_round: The round to fetch (of ``run_id``, default the newest run).
            best: Fetch the round aliased ``best`` instead.
            run_id: The run of ``server_round``.

        Returns:
            ``(checkpoint path, card path)``.

        Raises:
            RegistryError: Unknown run or round, nothing marked best, or a missing or corrupt
                checkpoint in the store. Nothing is written then.
        """
        if best == (server_round is not None):
            raise RegistryError("give exactly one of a round and best.",
                                "use --round N or --best.")
        criteria: dict[str, Any] | None = None
        version: str | None = None
        if best:
            info, chosen, criteria, version = self.best()
        else:
            assert server_round is not None
            info = self.run(run_id)
            chosen = info.round(server_round)
        target = Path(out)
        if target.is_dir():
            target = target / f"{self.model_name}-round-{chosen.server_round}.pt"
        card_path = target.with_suffix(".json")
        with tempfile.TemporaryDirectory(prefix="fedcloud-download-") as tmp:
            with self.mlflow_errors(
                    f"fetching the checkpoint of round {chosen.server_round} of run {info.run_id}",
                    "the store lacks the file; pick another round or restore the artifacts."):
                local = Path(self.client.download_artifacts(info.run_id, chosen.checkpoint, tmp))
            load_checkpoint(local, chosen.sha256)
            data = local.read_bytes()
        card = {
            "format": CARD_FORMAT,
            "checkpoint": target.name,
            "sha256": chosen.sha256,
            "experiment": self.experiment,
            "tracking_uri": self.tracking_uri,
            "run_id": info.run_id,
            "run_name": info.run_name,
            "round": chosen.server_round,
            "metrics": dict(chosen.metrics),
            "participants": list(chosen.participants),
            "model_spec": {k: info.params[k] for k in MODEL_SPEC_KEYS if k in info.params},
            "params": dict(info.params),
            "criteria": criteria,
            "model_version": version,
            "load": "state = torch.load(checkpoint, weights_only=True); "
                    "fl.registry.store.load_model(checkpoint) rebuilds the model from model_spec.",
        }
        _write_atomic(target, lambda p: p.write_bytes(data))
        _write_atomic(card_path, lambda p: p.write_text(json.dumps(card, indent=2) + "\n",
                                                        encoding="utf-8"))
        return target, card_path

    # -- plot ---------------------------------------------------------------------------------

    def plot(self, out: str | Path, run_id: str | None = None) -> Path:
        """Draw the global metrics per round of a run (default the newest) to a PNG file.

        Raises:
            RegistryError: Unknown run, or a run without rounds.
        """
        info = self.run(run_id)
        if not info.rounds:
            raise RegistryError(f"run {info.run_id} has no recorded rounds to plot.",
                                "pick a run with rounds (fedcloud models list).")
        best_round: int | None = None
        with contextlib.suppress(RegistryError):
            best_run, chosen, _, _ = self.best()
            if best_run.run_id == info.run_id:
                best_round = chosen.server_round
        return plot_rounds(info, Path(out), best_round)


def plot_rounds(info: RunInfo, out: Path, best_round: int | None = None) -> Path:
    """Write ``out`` (PNG): loss, and accuracy/precision/recall/F1, per round of ``info``.

    Args:
        info: The run and its rounds.
        out: The PNG file to write (atomically).
        best_round: The round aliased ``best``, marked with a vertical line when given.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    xs = [r.server_round for r in info.rounds]
    fig, (ax_loss, ax_q) = plt.subplots(1, 2, figsize=(10, 4), constrained_layout=True)
    try:
        ax_loss.plot(xs, [r.metrics.get("loss", math.nan) for r in info.rounds], marker="o")
        ax_loss.set(title="loss", xlabel="round")
        for name in METRICS[1:]:
            ax_q.plot(xs, [r.metrics.get(name, math.nan) for r in info.rounds], marker="o",
                      label=name)
        ax_q.set(title="global metrics", xlabel="round", ylim=(0.0, 1.02))
        for ax in (ax_loss, ax_q):
            ax.set_xticks(xs)
            ax.grid(alpha=0.3)
            if best_round is not None:
                ax.axvline(best_round, color="grey", linestyle="--", label="best")
        ax_q.legend(loc="lower right")
        fig.suptitle(f"{info.run_name or info.run_id} ({info.run_id[:8]})")
        if out.suffix.lower() != ".png":
            raise RegistryError(f"{out}: the plot is written as PNG.", "use --out FILE.png.")
        _write_atomic(out, lambda p: fig.savefig(p, format="png", dpi=100))
    finally:
        plt.close(fig)
    return out


def open_store(tracking_uri: str | Path, experiment: str) -> MlflowRoundStore:
    """Return the round store the ServerApp writes to.

    Args:
        tracking_uri: A tracking URI (``sqlite:///...``, ``http://127.0.0.1:5000``) or a directory
            for the embedded store (see :func:`resolve_store`).
        experiment: ``fedcloud-<stack>``.
    """
    return MlflowRoundStore(tracking_uri, experiment)


def load_model(checkpoint: str | Path,
               builder: Callable[[Mapping[str, Any]], torch.nn.Module] | None = None,
               ) -> torch.nn.Module:
    """Rebuild the model of a downloaded checkpoint for inference (``eval()`` mode).

    Args:
        checkpoint: A file written by :meth:`MlflowRoundStore.download` (its card next to it).
        builder: Builds the model from the card's ``model_spec``; default ``fl.app.task.build_model``.

    Raises:
        RegistryError: The card or checkpoint is missing or corrupt, or the weights do not fit.
    """
    path = Path(checkpoint)
    card_path = path.with_suffix(".json")
    try:
        card = json.loads(card_path.read_text(encoding="utf-8"))
        spec = dict(card["model_spec"])
        digest = str(card["sha256"])
    except FileNotFoundError:
        raise RegistryError(f"model card {card_path} does not exist.",
                            "download the model again (it writes the card).") from None
    except (ValueError, KeyError, TypeError):
        raise RegistryError(f"model card {card_path} is corrupt.",
                            "download the model again (it writes the card).") from None
    state = load_checkpoint(path, digest)
    builder_fn: Callable[[Mapping[str, Any]], torch.nn.Module]
    if builder is None:
        from fl.app.task import build_model

        builder_fn = build_model
    else:
        builder_fn = builder
    # Run params are stored as strings; the spec's numbers come back as ints.
    spec = {k: int(v) if isinstance(v, str) and v.isdigit() else v for k, v in spec.items()}
    model = builder_fn(spec)
    try:
        model.load_state_dict(state)
    except RuntimeError as exc:
        first = str(exc).strip().splitlines()[0]
        raise RegistryError(f"checkpoint {path} does not fit model {spec} ({first}).",
                            "rebuild with the model_spec recorded in the card.") from None
    model.eval()
    return model
