"""Resume: the store's unfinished run of the same config, and its last checkpoint that verifies.

A ServerApp started for a config whose newest run in the store did not finish (its aggregator
died, it was stopped, too few participants) continues that run: same store run, the last
committed round's weights, the next round. Rounds are committed with a SHA-256 marker
(``fl/app/store.py``); a checkpoint that fails its digest falls back to the round before.
See fl/README.md, "Resume from the last committed round".
"""

from __future__ import annotations

import hashlib
import json
import tempfile
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from fl.app.errors import AppError
from fl.app.runconfig import RunConfig
from fl.app.store import (
    CHECKPOINT_FILE,
    ROUND_FILE,
    ROUND_TAG_PREFIX,
    ROUNDS_ARTIFACT_DIR,
    MlflowRoundWriter,
    round_key,
    sha256_file,
)

DIGEST_TAG = "fedcloud.config_digest"
RESUMES_TAG = "fedcloud.resumes"
FLOWER_RUNS_TAG = "fedcloud.flower_run_ids"
# RunConfig fields that do not make a different run: where it is recorded and the switch itself.
UNDIGESTED: tuple[str, ...] = ("tracking_uri", "run_name", "resume")
FIX_FRESH = "set fedcloud:training.resume to false to start a new run"


def config_digest(cfg: RunConfig) -> str:
    """The run's identity: SHA-256 over every run config field that changes the training."""
    doc = {k: v for k, v in asdict(cfg).items() if k not in UNDIGESTED}
    return hashlib.sha256(json.dumps(doc, sort_keys=True).encode()).hexdigest()


@dataclass(frozen=True)
class Resumable:
    """An unfinished run to continue.

    Attributes:
        run_id: The store's run id.
        status: Its status when found (``RUNNING`` after a hard kill, ``KILLED``, ``FAILED``).
        server_round: The last committed round whose checkpoint verifies (0: none committed,
            the run starts again from the seeded initial model).
        state: That round's weights (``None`` for round 0).
        rounds: The committed rounds' documents up to ``server_round`` (``round.json``).
        corrupt: Committed rounds after ``server_round`` whose checkpoint failed its digest.
        resumes: How many times the run was resumed before.
    """

    run_id: str
    status: str
    server_round: int
    state: dict[str, np.ndarray] | None
    rounds: tuple[dict[str, Any], ...] = ()
    corrupt: tuple[int, ...] = ()
    resumes: int = 0


def newest_run(writer: MlflowRoundWriter, cfg: RunConfig) -> Any | None:
    """The store's newest run of ``cfg``'s digest if it did not finish (an MLflow ``Run``).

    Raises:
        AppError: The store cannot be read.
    """
    if writer.embedded_db is not None and not writer.embedded_db.is_file():
        return None  # nothing recorded yet
    with writer.mlflow_errors("looking for a run to resume",
                              f"check the store, or {FIX_FRESH}."):
        found = writer.client.get_experiment_by_name(writer.experiment)
        if found is None:
            return None
        runs = writer.client.search_runs(
            [str(found.experiment_id)],
            filter_string=f"tags.`{DIGEST_TAG}` = '{config_digest(cfg)}'",
            order_by=["attributes.start_time DESC"], max_results=1)
    return runs[0] if runs and runs[0].info.status != "FINISHED" else None


def committed_rounds(run: Any) -> list[tuple[int, str]]:
    """``(round, checkpoint SHA-256)`` of a run's committed rounds, in order."""
    return sorted((int(k[len(ROUND_TAG_PREFIX):]), str(v)) for k, v in run.data.tags.items()
                  if k.startswith(ROUND_TAG_PREFIX) and k[len(ROUND_TAG_PREFIX):].isdigit())


def find_resumable(writer: MlflowRoundWriter, cfg: RunConfig,
                   expected: Mapping[str, tuple[int, ...]]) -> Resumable | None:
    """Return the newest run of ``cfg``'s digest if it did not finish, else ``None``.

    Args:
        writer: The ServerApp's store.
        cfg: The run config (its digest selects the run).
        expected: The model's state_dict keys -> shapes (a checkpoint must fit them).

    Raises:
        AppError: The store cannot be read, or no committed round has a checkpoint that
            verifies and fits the model (the message names the run and the fix).
    """
    run = newest_run(writer, cfg)
    if run is None:
        return None
    committed = committed_rounds(run)
    resumes = int(run.data.tags.get(RESUMES_TAG, "0") or 0)
    corrupt: list[int] = []
    with tempfile.TemporaryDirectory(prefix="fedcloud-resume-") as tmp:
        for n, digest in reversed(committed):
            state = _verified_state(writer, run.info.run_id, n, digest, Path(tmp), expected)
            if state is None:
                corrupt.append(n)
                continue
            docs = tuple(_round_doc(writer, run.info.run_id, m, Path(tmp))
                         for m, _ in committed if m <= n)
            return Resumable(run.info.run_id, run.info.status, n, state, docs,
                             tuple(sorted(corrupt)), resumes)
    if committed:
        raise AppError(f"run {run.info.run_id} has {len(committed)} committed round(s) but no "
                       "checkpoint that matches its SHA-256 marker.",
                       f"restore the store from a backup, or {FIX_FRESH}.")
    return Resumable(run.info.run_id, run.info.status, 0, None, (), (), resumes)


def _verified_state(writer: MlflowRoundWriter, run_id: str, n: int, digest: str, tmp: Path,
                    expected: Mapping[str, tuple[int, ...]]) -> dict[str, np.ndarray] | None:
    """Round ``n``'s weights if its checkpoint verifies; ``None`` if it is missing or corrupt.

    Raises:
        AppError: The checkpoint verifies but does not fit the model (the config changed).
    """
    import torch

    path = f"{ROUNDS_ARTIFACT_DIR}/{round_key(n)}/{CHECKPOINT_FILE}"
    try:
        local = Path(writer.client.download_artifacts(run_id, path, str(tmp)))
        if sha256_file(local) != digest:
            return None
        tensors = torch.load(local, map_location="cpu", weights_only=True)
    except Exception:  # missing artifact, unreadable file: this round cannot be resumed from
        return None
    shapes = {str(k): tuple(v.shape) for k, v in tensors.items()}
    if shapes != dict(expected):
        raise AppError(f"round {n} of run {run_id} holds a model that does not fit this run's "
                       "(its layers or shapes differ).", f"{FIX_FRESH}.")
    return {str(k): v.detach().cpu().numpy() for k, v in tensors.items()}


def _round_doc(writer: MlflowRoundWriter, run_id: str, n: int, tmp: Path) -> dict[str, Any]:
    """Round ``n``'s ``round.json`` (what its round line said), or its number alone."""
    path = f"{ROUNDS_ARTIFACT_DIR}/{round_key(n)}/{ROUND_FILE}"
    try:
        doc = json.loads(Path(writer.client.download_artifacts(run_id, path, str(tmp)))
                         .read_text(encoding="utf-8"))
    except Exception:
        return {"server_round": n}
    return doc if isinstance(doc, dict) else {"server_round": n}


def reopen(writer: MlflowRoundWriter, found: Resumable, flower_run_id: int) -> str:
    """Make ``found`` the writer's active run again (status ``RUNNING``); return its id."""
    with writer.mlflow_errors(f"reopening run {found.run_id}",
                              f"check the store, or {FIX_FRESH}."):
        tags = writer.client.get_run(found.run_id).data.tags
    before = tags.get(FLOWER_RUNS_TAG) or tags.get("flower_run_id", "")
    ids = [i for i in str(before).split(",") if i] + [str(flower_run_id)]
    writer.reopen_run(found.run_id, {RESUMES_TAG: str(found.resumes + 1),
                                     "flower_run_id": str(flower_run_id),
                                     FLOWER_RUNS_TAG: ",".join(ids)})
    return found.run_id


def round_line(doc: Mapping[str, Any]) -> dict[str, Any]:
    """A committed round's document as the round line the ServerApp printed for it."""
    extra = doc.get("extra")
    extra = extra if isinstance(extra, Mapping) else {}
    return {"round": int(doc["server_round"]), "metrics": dict(doc.get("metrics") or {}),
            "per_client": list(doc.get("per_client") or []),
            "confusion": list(doc.get("confusion") or []), **dict(extra), "replayed": True}
