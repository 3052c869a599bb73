"""Model Manager, reader side: the runs and committed rounds of a stack's MLflow store.

:class:`MlflowRoundStore` is the round writer (:mod:`fl.app.store`, where the format is defined)
with :class:`fedcloud.core.errors.RegistryError` plus the queries; readers see only rounds whose
commit tag exists. See fl/README.md, "Model Manager".
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

from fedcloud.core.errors import RegistryError
from fl.app import store as app_store
from fl.app.errors import AppError
from fl.app.records import METRICS
from fl.app.store import (
    CHECKPOINT_FILE,
    CLIENT_METRIC_PREFIX,
    MLFLOW_QUIET_ENV,
    ROUND_TAG_PREFIX,
    ROUNDS_ARTIFACT_DIR,
    MlflowRoundWriter,
    round_key,
    safe_key,
)
from fl.registry.download import CARD_FORMAT, download_round, load_checkpoint, load_model
from fl.registry.plot import plot_rounds, plot_run
from fl.registry.recommend import BEST_ALIAS, Recommendation, best_round, recommend_round

if TYPE_CHECKING:
    from fl.registry.criteria import Criteria

# The Model Manager's API in one place (the CLI, the compositions and the README use it).
__all__ = [
    "BEST_ALIAS", "CARD_FORMAT", "MlflowRoundStore", "Recommendation", "RoundInfo", "RunInfo",
    "load_checkpoint", "load_model", "mlflow_env", "open_store", "plot_rounds", "registry_error",
    "resolve_store",
]


def registry_error(exc: AppError) -> RegistryError:
    """Return an app error (model, data or store) as the operator's :class:`RegistryError`."""
    return RegistryError(exc.message, exc.fix)


def mlflow_env(extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """Return a copy of ``os.environ`` for an MLflow subprocess (``mlflow ui``/``server``)."""
    env = dict(os.environ)
    env.update(MLFLOW_QUIET_ENV)
    if extra:
        env.update(extra)
    return env


def resolve_store(location: str | Path) -> tuple[str, str | None]:
    """Return ``(tracking_uri, artifact_location)`` (see :func:`fl.app.store.resolve_store`).

    Raises:
        RegistryError: The location is empty.
    """
    try:
        return app_store.resolve_store(location)
    except AppError as exc:
        raise registry_error(exc) from None


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


def _latest_by_step(history: Any) -> dict[int, float]:
    """Return a metric history as ``{step: value}``, the latest logged value per step."""
    out: dict[int, float] = {}
    for m in sorted(history, key=lambda m: (m.timestamp, m.step)):
        out[int(m.step)] = float(m.value)
    return out


def _legacy_round(run_id: str, server_round: int, key: str, value: str) -> RoundInfo:
    """Read a commit tag written before the format moved to metrics (a JSON marker)."""
    try:
        marker = json.loads(value)
        return RoundInfo(
            run_id=run_id, server_round=server_round,
            metrics={k: float(v) for k, v in marker["metrics"].items()},
            checkpoint=str(marker["checkpoint"]), sha256=str(marker["sha256"]),
            participants=tuple(str(p) for p in marker.get("participants", ())))
    except (ValueError, KeyError, TypeError, AttributeError):
        raise RegistryError(f"run {run_id}: the record of {key} is corrupt.",
                            f"delete the tag {key} in the MLflow UI to drop that round.") from None


def _client_keys(latest: Mapping[str, float]) -> dict[str, str]:
    """Return one per-client metric key per participant (``num_examples`` when there is one)."""
    out: dict[str, str] = {}
    for key in sorted(latest):
        if not key.startswith(CLIENT_METRIC_PREFIX) or "/" not in key[len(CLIENT_METRIC_PREFIX):]:
            continue
        name, _, figure = key[len(CLIENT_METRIC_PREFIX):].rpartition("/")
        if name not in out or figure == "num_examples":
            out[name] = key
    return out


class MlflowRoundStore(MlflowRoundWriter):
    """The MLflow round store on the operator's side: the writer plus the Model Manager's queries.

    Args:
        location: See :func:`resolve_store`.
        experiment: The MLflow experiment (and registered model) name, ``fedcloud-<stack>``.
    """

    error: ClassVar[type[Exception]] = RegistryError

    def __init__(self, location: str | Path, experiment: str) -> None:
        super().__init__(location, experiment)
        self.model_name = safe_key(experiment)

    def runs(self) -> list[RunInfo]:
        """Return every run of the experiment, newest first, with its committed rounds."""
        return [self._run_info(run) for run in self._search()]

    def _search(self) -> list[Any]:
        from mlflow.entities import ViewType

        exp_id = self.experiment_id()
        out: list[Any] = []
        with self.mlflow_errors("listing runs", "check the store location."):
            token: str | None = None
            while True:
                page = self.client.search_runs([exp_id], run_view_type=ViewType.ACTIVE_ONLY,
                                               max_results=1000,
                                               order_by=["attributes.start_time DESC"],
                                               page_token=token)
                out.extend(page)
                token = page.token
                if not token:
                    break
        return out

    def run(self, run_id: str | None = None) -> RunInfo:
        """Return one run (the newest when ``run_id`` is None).

        Raises:
            RegistryError: No runs, or no run with that id (prefixes of 6+ characters match).
        """
        runs = self._search()
        if not runs:
            raise RegistryError(f"no runs recorded in experiment '{self.experiment}'.",
                                "train first (fedcloud up), or check --stack.")
        if run_id is None:
            return self._run_info(runs[0])
        matches = [r for r in runs if r.info.run_id == run_id or r.info.run_name == run_id or
                   (len(run_id) >= 6 and r.info.run_id.startswith(run_id))]
        if len(matches) == 1:
            return self._run_info(matches[0])
        known = ", ".join(f"{r.info.run_id[:8]} ({r.info.run_name})" for r in runs[:5])
        if not matches:
            raise RegistryError(f"unknown run '{run_id}' in experiment '{self.experiment}'.",
                                f"use one of: {known} (fedcloud models list shows them all).")
        raise RegistryError(f"run '{run_id}' matches {len(matches)} runs.",
                            "give more characters of the run id.")

    def _run_info(self, run: Any) -> RunInfo:
        return RunInfo(run_id=run.info.run_id, run_name=run.info.run_name or "",
                       status=run.info.status, start_time=int(run.info.start_time or 0),
                       params=dict(run.data.params), tags=dict(run.data.tags),
                       rounds=self._rounds_of(run))

    def _rounds_of(self, run: Any) -> tuple[RoundInfo, ...]:
        """Return the committed rounds of an MLflow run, ordered by round.

        A round is committed when its tag ``fedcloud.round.NNNN`` (the checkpoint's SHA-256)
        exists; its metrics are the run's metric histories at ``step = round``, its participants
        the clients with a ``client/<name>/...`` metric at that step.
        """
        run_id = run.info.run_id
        committed = {int(k[len(ROUND_TAG_PREFIX):]): (k, v) for k, v in run.data.tags.items()
                     if k.startswith(ROUND_TAG_PREFIX) and k[len(ROUND_TAG_PREFIX):].isdigit()}
        if not committed:
            return ()
        current = {n: kv for n, kv in committed.items() if not kv[1].lstrip().startswith("{")}
        with self.mlflow_errors(f"reading the metrics of run {run_id}", "check the store."):
            history = {m: _latest_by_step(self.client.get_metric_history(run_id, m))
                       for m in METRICS if current}
            clients = _client_keys(run.data.metrics)
            seen = {name: _latest_by_step(self.client.get_metric_history(run_id, key))
                    for name, key in clients.items() if current}
        rounds = []
        for n, (key, value) in sorted(committed.items()):
            if n not in current:
                rounds.append(_legacy_round(run_id, n, key, value))
                continue
            rounds.append(RoundInfo(
                run_id=run_id, server_round=n,
                metrics={m: h[n] for m, h in history.items() if n in h},
                checkpoint=f"{ROUNDS_ARTIFACT_DIR}/{round_key(n)}/{CHECKPOINT_FILE}",
                sha256=value.strip(),
                participants=tuple(name for name, steps in sorted(seen.items()) if n in steps)))
        return tuple(rounds)

    def recommend(self, criteria: Criteria, run_id: str | None = None) -> Recommendation:
        """Choose the best round of a run and register it aliased ``best``.

        See :func:`fl.registry.recommend.recommend_round`.
        """
        return recommend_round(self, criteria, run_id)

    def best(self) -> tuple[RunInfo, RoundInfo, dict[str, Any], str]:
        """Return the round aliased ``best``: ``(run, round, criteria, version)``.

        See :func:`fl.registry.recommend.best_round`.
        """
        return best_round(self)

    def download(self, out: str | Path, server_round: int | None = None, best: bool = False,
                 run_id: str | None = None) -> tuple[Path, Path]:
        """Write a round's checkpoint and its JSON card; return both paths.

        See :func:`fl.registry.download.download_round`.
        """
        return download_round(self, out, server_round=server_round, best=best, run_id=run_id)

    def plot(self, out: str | Path, run_id: str | None = None) -> Path:
        """Draw the global metrics per round of a run to a PNG file.

        See :func:`fl.registry.plot.plot_run`.
        """
        return plot_run(self, out, run_id)


def open_store(location: str | Path, experiment: str) -> MlflowRoundStore:
    """Return the operator's view of a round store.

    Args:
        location: A tracking URI (``sqlite:///...``, ``http://127.0.0.1:5000``) or a directory
            for the embedded store (see :func:`resolve_store`).
        experiment: ``fedcloud-<stack>``.
    """
    return MlflowRoundStore(location, experiment)
