"""Model Manager: a recorded round handed out as a torch-loadable file plus its JSON card.

:func:`download_round` writes ``<out>.pt`` (the global ``state_dict``, verified against the
recorded SHA-256) and ``<out>.json`` (the card: run, round, metrics, model spec, criteria);
:func:`load_model` rebuilds the model from the two for inference.
"""

from __future__ import annotations

import json
import tempfile
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from fedcloud.core.errors import RegistryError
from fedcloud.core.files import write_atomic_with
from fl.app.errors import AppError
from fl.app.store import MODEL_SPEC_KEYS, sha256_file
from fl.registry.recommend import best_round

if TYPE_CHECKING:
    import torch

    from fl.registry.store import MlflowRoundStore, RoundInfo, RunInfo

CARD_FORMAT = "fedcloud-model-card/1"
REDOWNLOAD = "download it again: fedcloud models download --round N --out PATH."


def load_checkpoint(path: Path, sha256: str | None = None) -> dict[str, torch.Tensor]:
    """Load a checkpoint file into a ``state_dict``, verifying it first.

    Args:
        path: A file written by the round writer or by :func:`download_round`.
        sha256: The expected digest (from the round record or the card), if known.

    Raises:
        RegistryError: The file is missing, its digest differs, or it is not a state_dict.
    """
    import pickle

    import torch

    if not path.is_file():
        raise RegistryError(f"checkpoint {path} does not exist.", REDOWNLOAD)
    if sha256 is not None and sha256_file(path) != sha256:
        raise RegistryError(f"checkpoint {path} is corrupt (SHA-256 differs from the record).",
                            REDOWNLOAD)
    try:
        data = torch.load(path, map_location="cpu", weights_only=True)
    except (RuntimeError, OSError, EOFError, ValueError, pickle.UnpicklingError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise RegistryError(f"checkpoint {path} cannot be loaded by torch ({first}).",
                            REDOWNLOAD) from None
    if not isinstance(data, dict) or not all(isinstance(v, torch.Tensor) for v in data.values()):
        raise RegistryError(f"checkpoint {path} is not a state_dict of tensors.", REDOWNLOAD)
    return data


def fetch_checkpoint(store: MlflowRoundStore, chosen: RoundInfo, directory: Path,
                     ) -> tuple[Path, dict[str, torch.Tensor]]:
    """Download a round's checkpoint into ``directory``; return its path and verified state.

    Raises:
        RegistryError: The store lacks the file, or it is corrupt.
    """
    with store.mlflow_errors(
            f"fetching the checkpoint of round {chosen.server_round} of run {chosen.run_id}",
            "the store lacks the file; pick another round or restore the artifacts."):
        local = Path(store.client.download_artifacts(chosen.run_id, chosen.checkpoint,
                                                     str(directory)))
    return local, load_checkpoint(local, chosen.sha256)


def model_spec(params: Mapping[str, Any]) -> dict[str, Any]:
    """Return the model spec recorded in a run's params (:data:`MODEL_SPEC_KEYS`)."""
    return {k: params[k] for k in MODEL_SPEC_KEYS if k in params}


def build_checkpoint_model(spec: Mapping[str, Any], state: Mapping[str, torch.Tensor], where: str,
                           builder: Callable[[Mapping[str, Any]], torch.nn.Module] | None = None,
                           ) -> torch.nn.Module:
    """Build the model of ``spec`` (default ``fl.app.task.build_model``), load ``state``, eval().

    Raises:
        RegistryError: The spec names no model the app can build, or the weights do not fit
            (``where`` names the checkpoint in the message).
    """
    build: Callable[[Mapping[str, Any]], torch.nn.Module]
    if builder is None:
        from fl.app.task import build_model

        build = build_model
    else:
        build = builder
    # Run params are stored as strings; the spec's numbers come back as ints.
    spec = {k: int(v) if isinstance(v, str) and v.isdigit() else v for k, v in spec.items()}
    try:
        model = build(spec)
    except AppError as exc:
        raise RegistryError(f"model card of {where}: {exc.message}", exc.fix) from None
    try:
        model.load_state_dict(state)
    except RuntimeError as exc:
        first = str(exc).strip().splitlines()[0]
        raise RegistryError(f"checkpoint {where} does not fit model {spec} ({first}).",
                            "rebuild with the model_spec recorded in the card.") from None
    model.eval()
    return model


def download_round(store: MlflowRoundStore, out: str | Path, server_round: int | None = None,
                   best: bool = False, run_id: str | None = None) -> tuple[Path, Path]:
    """Write a round's checkpoint (torch-loadable ``state_dict``) and its JSON card.

    Args:
        store: The operator's store.
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
        raise RegistryError("give exactly one of a round and best.", "use --round N or --best.")
    criteria: dict[str, Any] | None = None
    version: str | None = None
    if server_round is None:
        info, chosen, criteria, version = best_round(store)
    else:
        info = store.run(run_id)
        chosen = info.round(server_round)
    target = Path(out)
    if target.is_dir():
        target = target / f"{store.model_name}-round-{chosen.server_round}.pt"
    with tempfile.TemporaryDirectory(prefix="fedcloud-download-") as tmp:
        local, _ = fetch_checkpoint(store, chosen, Path(tmp))
        data = local.read_bytes()
    card = _card(store, info, chosen, target.name, criteria, version)
    write_atomic_with(target, lambda p: p.write_bytes(data))
    card_path = target.with_suffix(".json")
    write_atomic_with(card_path, lambda p: p.write_text(json.dumps(card, indent=2) + "\n",
                                                   encoding="utf-8"))
    return target, card_path


def _card(store: MlflowRoundStore, info: RunInfo, chosen: RoundInfo, checkpoint: str,
          criteria: dict[str, Any] | None, version: str | None) -> dict[str, Any]:
    """Return the JSON card that travels next to a downloaded checkpoint."""
    return {
        "format": CARD_FORMAT,
        "checkpoint": checkpoint,
        "sha256": chosen.sha256,
        "experiment": store.experiment,
        "tracking_uri": store.tracking_uri,
        "run_id": info.run_id,
        "run_name": info.run_name,
        "round": chosen.server_round,
        "metrics": dict(chosen.metrics),
        "participants": list(chosen.participants),
        "model_spec": model_spec(info.params),
        "params": dict(info.params),
        "criteria": criteria,
        "model_version": version,
        "load": "state = torch.load(checkpoint, weights_only=True); "
                "fl.registry.store.load_model(checkpoint) rebuilds the model from model_spec.",
    }


def _read_card(card_path: Path) -> tuple[dict[str, Any], str]:
    try:
        card = json.loads(card_path.read_text(encoding="utf-8"))
        return dict(card["model_spec"]), str(card["sha256"])
    except FileNotFoundError:
        raise RegistryError(f"model card {card_path} does not exist.",
                            "download the model again (it writes the card).") from None
    except (ValueError, KeyError, TypeError):
        raise RegistryError(f"model card {card_path} is corrupt.",
                            "download the model again (it writes the card).") from None


def load_model(checkpoint: str | Path,
               builder: Callable[[Mapping[str, Any]], torch.nn.Module] | None = None,
               ) -> torch.nn.Module:
    """Rebuild the model of a downloaded checkpoint for inference (``eval()`` mode).

    Args:
        checkpoint: A file written by :func:`download_round` (its card next to it).
        builder: Builds the model from the card's ``model_spec``; default
            ``fl.app.task.build_model``.

    Raises:
        RegistryError: The card or checkpoint is missing or corrupt, the spec names no model
            the app can build, or the weights do not fit.
    """
    path = Path(checkpoint)
    spec, digest = _read_card(path.with_suffix(".json"))
    return build_checkpoint_model(spec, load_checkpoint(path, digest), str(path), builder)
