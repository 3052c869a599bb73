"""Model Manager: the best round of a run for the user's criteria, registered in MLflow.

The chosen round is logged as an MLflow Model (``fl/registry/mlmodel.py``) and becomes a version
of the registered model named after the experiment (``fedcloud-<stack>``), with the alias
:data:`BEST_ALIAS` and the criteria, round, run, metrics and checkpoint digest as version tags
(JSON values). Asking again with the same criteria returns the same version.
"""

from __future__ import annotations

import contextlib
import json
import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from fedcloud.core.errors import RegistryError
from fl.registry.criteria import Criteria, choose

if TYPE_CHECKING:
    from fl.registry.store import MlflowRoundStore, RoundInfo, RunInfo

BEST_ALIAS = "best"


@dataclass(frozen=True)
class Recommendation:
    """The chosen round and its registered model version."""

    round: RoundInfo
    criteria: Criteria
    model_name: str
    version: str
    candidates: int
    model_uri: str = ""  # models:/<name>/<version>, what mlflow.pytorch.load_model takes


def recommend_round(store: MlflowRoundStore, criteria: Criteria,
                    run_id: str | None = None) -> Recommendation:
    """Choose the best round of a run and register it as a model version aliased ``best``.

    Args:
        store: The operator's store.
        criteria: What to optimise and the bounds to meet; ties go to the earlier round.
        run_id: The run (default: the newest).

    Raises:
        RegistryError: Unknown run, no rounds, or no round meets the criteria (the message
            gives the best values reached).
    """
    info = store.run(run_id)
    if not info.rounds:
        raise RegistryError(f"run {info.run_id} has no recorded rounds.",
                            "pick a run with rounds (fedcloud models list).")
    index = choose([r.metrics for r in info.rounds], criteria,
                   [f"round {r.server_round}" for r in info.rounds])
    chosen = info.rounds[index]
    version = _register(store, info, chosen, criteria)
    return Recommendation(round=chosen, criteria=criteria, model_name=store.model_name,
                          version=version, candidates=len(info.rounds),
                          model_uri=f"models:/{store.model_name}/{version}")


def json_value(value: float) -> str:
    """Return a metric as a JSON number (``null`` when it is not finite)."""
    return json.dumps(value if math.isfinite(value) else None)


def _register(store: MlflowRoundStore, info: RunInfo, chosen: RoundInfo,
              criteria: Criteria) -> str:
    from mlflow.exceptions import MlflowException

    from fl.registry.mlmodel import log_round_model

    criteria_json = json.dumps(criteria.to_dict(), sort_keys=True, allow_nan=False)
    tags = {"run_id": info.run_id, "round": str(chosen.server_round),
            "criteria": criteria_json, "sha256": chosen.sha256,
            **{f"metric.{k}": json_value(v) for k, v in chosen.metrics.items()}}
    client = store.client
    with store.mlflow_errors("registering the best model", "retry fedcloud models best."):
        try:
            client.get_registered_model(store.model_name)
        except MlflowException:
            client.create_registered_model(
                store.model_name, description=f"Global models of {store.experiment}.")
        with contextlib.suppress(MlflowException):
            current = client.get_model_version_by_alias(store.model_name, BEST_ALIAS)
            # Reused only if it is an MLflow Model (a LoggedModel, ``models:/m-...``); versions
            # made before were plain artifact directories.
            same = all(current.tags.get(k) == v for k, v in tags.items())
            if same and str(current.source).startswith("models:/"):
                return str(current.version)
    version = log_round_model(store, info, chosen, tags,
                              f"round {chosen.server_round}: {criteria.describe()}")
    with store.mlflow_errors("registering the best model", "retry fedcloud models best."):
        client.set_registered_model_alias(store.model_name, BEST_ALIAS, version)
    return version


def best_round(store: MlflowRoundStore) -> tuple[RunInfo, RoundInfo, dict[str, Any], str]:
    """Return the round aliased ``best``: ``(run, round, criteria, version)``.

    Raises:
        RegistryError: Nothing has been recommended yet.
    """
    from mlflow.exceptions import MlflowException

    store.experiment_id()
    try:
        version = store.client.get_model_version_by_alias(store.model_name, BEST_ALIAS)
    except MlflowException:
        raise RegistryError(f"no model of '{store.experiment}' is marked best yet.",
                            "run: fedcloud models best --metric f1 [--min accuracy=0.9]."
                            ) from None
    info = store.run(version.tags["run_id"])
    chosen = info.round(int(version.tags["round"]))
    return info, chosen, json.loads(version.tags.get("criteria", "{}")), str(version.version)
