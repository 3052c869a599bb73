"""Model Manager: a recorded round logged as an MLflow Model (pytorch flavor) and registered.

The round's checkpoint is rebuilt into its module (``fl.app.task.build_model``), logged with
``mlflow.pytorch.log_model`` (pt2 format, tensor signature, input example) as a LoggedModel of
the round's run, and registered as a version of the stack's registered model, so
``mlflow.pytorch.load_model("models:/<name>@best")``, pyfunc and ``mlflow models serve`` work.
See fl/README.md, "Model Manager".
"""

from __future__ import annotations

import contextlib
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from fl.registry.download import build_checkpoint_model, fetch_checkpoint, model_spec

if TYPE_CHECKING:
    import numpy as np
    import torch

    from fl.registry.store import MlflowRoundStore, RoundInfo, RunInfo

# The LoggedModel's name inside the run (its artifacts: models/<model id>/artifacts/).
LOGGED_MODEL_NAME = "model"
# Two examples: torch.export makes a size-1 dimension static, so a batch of one would fix the
# served batch size to 1 (mlflow/pytorch/__init__.py, the pt2 branch of save_model).
EXAMPLE_BATCH = 2


def input_example(model: torch.nn.Module, spec: Mapping[str, Any]) -> np.ndarray:
    """Return a fixed float32 batch ``(2, C, S, S)`` the model takes (C from its first conv)."""
    import numpy as np
    import torch

    conv = next((m for m in model.modules() if isinstance(m, torch.nn.Conv2d)), None)
    channels = int(conv.in_channels) if conv is not None else 1
    size = int(spec.get("image_size", 32))
    rng = np.random.default_rng(0)
    return rng.standard_normal((EXAMPLE_BATCH, channels, size, size)).astype(np.float32)


def _fluent_store(tracking_uri: str) -> contextlib.AbstractContextManager[None]:
    """Point MLflow's global tracking URI at the store for a block, then restore it exactly.

    ``log_model`` and the SQL registry's ``create_model_version`` (which resolves
    ``models:/<model id>`` with a default ``MlflowClient()``) both read it. MLflow's own
    ``_use_tracking_uri`` (mlflow/tracking/_tracking_service/utils.py, 3.17) restores an unset
    URI as unset, which ``mlflow.set_tracking_uri(mlflow.get_tracking_uri())`` would not.
    """
    from mlflow.tracking._tracking_service.utils import _use_tracking_uri

    return _use_tracking_uri(tracking_uri)


def log_round_model(store: MlflowRoundStore, info: RunInfo, chosen: RoundInfo,
                    tags: Mapping[str, str], description: str) -> str:
    """Log round ``chosen`` of ``info`` as an MLflow Model and register it; return the version.

    The LoggedModel belongs to the round's run (``source_run_id``, logged as a run output at
    ``step = round``, so it carries that round's metrics) and to the stack's experiment; the
    model version points at it (``models:/<model id>``) and at the run.

    Raises:
        RegistryError: The checkpoint is missing or corrupt, does not fit its model spec, or the
            store failed.
    """
    import mlflow
    import mlflow.pytorch
    import torch
    from mlflow.models import infer_signature

    spec = model_spec(info.params)
    with tempfile.TemporaryDirectory(prefix="fedcloud-mlmodel-") as tmp:
        _, state = fetch_checkpoint(store, chosen, Path(tmp))
    model = build_checkpoint_model(spec, state, f"round {chosen.server_round} of {info.run_id}")
    example = input_example(model, spec)
    with torch.no_grad():
        output = model(torch.from_numpy(example)).numpy()
    exp_id = store.experiment_id()
    with store.mlflow_errors(f"logging round {chosen.server_round} as an MLflow Model",
                             "retry fedcloud models best."), _fluent_store(store.tracking_uri):
        logged = store.client.create_logged_model(
            exp_id, name=LOGGED_MODEL_NAME, source_run_id=info.run_id,
            params={k: str(v) for k, v in spec.items()}, tags=dict(tags))
        mlflow.pytorch.log_model(
            model, name=LOGGED_MODEL_NAME, model_id=logged.model_id, run_id=info.run_id,
            step=chosen.server_round, signature=infer_signature(example, output),
            input_example=example, serialization_format="pt2",
            pip_requirements=[f"torch=={torch.__version__.split('+')[0]}"])
        version = store.client.create_model_version(
            store.model_name, source=f"models:/{logged.model_id}", run_id=info.run_id,
            model_id=logged.model_id, tags=dict(tags), description=description,
            await_creation_for=0)
    return str(version.version)
