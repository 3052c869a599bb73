"""Resume from the last committed round: which run, which checkpoint, what a corrupt one does.

A real MLflow store (SQLite + artifacts in a temporary directory) written by the ServerApp's own
round writer; the checkpoints are small tensors so that every check reads real files.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

from fl.app.errors import AppError
from fl.app.records import RoundRecord
from fl.app.resume import (
    DIGEST_TAG,
    FLOWER_RUNS_TAG,
    RESUMES_TAG,
    Resumable,
    config_digest,
    find_resumable,
    reopen,
    round_line,
)
from fl.app.runconfig import RunConfig
from fl.app.store import CHECKPOINT_FILE, ROUNDS_ARTIFACT_DIR, open_writer, round_key

SHAPES = {"w": (4, 4), "b": (3,)}
METRICS = {"loss": 1.0, "accuracy": 0.5, "precision": 0.5, "recall": 0.5, "f1": 0.5}


def _cfg(tmp_path: Path, **changes: object) -> RunConfig:
    base = RunConfig(model="covid_cnn", width=4, image_size=32, num_classes=3, rounds=4,
                     local_epochs=1, batch_size=8, learning_rate=0.05, fraction_train=1.0,
                     min_nodes=2, phase_timeout_s=5, node_wait_s=1, seed=1,
                     tracking_uri=str(tmp_path / "store"), experiment="fedcloud-t", stack="t")
    return replace(base, **changes)  # type: ignore[arg-type]


def _state(n: int) -> dict[str, torch.Tensor]:
    return {"w": torch.full(SHAPES["w"], float(n)), "b": torch.full(SHAPES["b"], -float(n))}


def _record(tmp_path: Path, cfg: RunConfig, rounds: int, status: str | None) -> str:
    """A run of ``cfg`` with ``rounds`` committed rounds, closed with ``status`` (None: open)."""
    writer = open_writer(tmp_path / "store", cfg.experiment)
    run_id = writer.start_run("t", {"seed": cfg.seed}, {DIGEST_TAG: config_digest(cfg),
                                                         "flower_run_id": "11"})
    for n in range(1, rounds + 1):
        writer.log_round(RoundRecord(n, METRICS, ({"participant": "a", "num_examples": 3},),
                                     extra={"contributors": ["a"]}), _state(n))
    if status is not None:
        writer.end_run(status)
    return run_id


def _checkpoint(tmp_path: Path, run_id: str, n: int) -> Path:
    found = list((tmp_path / "store" / "artifacts").rglob(
        f"{run_id}/artifacts/{ROUNDS_ARTIFACT_DIR}/{round_key(n)}/{CHECKPOINT_FILE}"))
    assert len(found) == 1, found
    return found[0]


def _find(tmp_path: Path, cfg: RunConfig) -> Resumable | None:
    return find_resumable(open_writer(tmp_path / "store", cfg.experiment), cfg, SHAPES)


@pytest.mark.parametrize("status", [None, "KILLED", "FAILED"])
def test_an_unfinished_run_resumes_from_its_last_committed_round(tmp_path: Path,
                                                                 status: str | None) -> None:
    cfg = _cfg(tmp_path)
    run_id = _record(tmp_path, cfg, 2, status)
    found = _find(tmp_path, cfg)
    assert found is not None
    assert (found.run_id, found.server_round, found.corrupt) == (run_id, 2, ())
    assert found.status == (status or "RUNNING")
    assert found.state is not None and np.array_equal(found.state["w"], np.full((4, 4), 2.0))
    assert [d["server_round"] for d in found.rounds] == [1, 2]
    line = round_line(found.rounds[0])
    assert (line["round"], line["replayed"], line["contributors"]) == (1, True, ["a"])


def test_a_finished_run_or_another_config_starts_a_new_run(tmp_path: Path) -> None:
    cfg = _cfg(tmp_path)
    assert _find(tmp_path, cfg) is None  # no store yet: nothing created either
    assert not (tmp_path / "store").exists()
    _record(tmp_path, cfg, 4, "FINISHED")
    assert _find(tmp_path, cfg) is None
    _record(tmp_path, cfg, 1, "KILLED")
    assert _find(tmp_path, replace(cfg, learning_rate=0.1)) is None
    # Where it is recorded, its name and the switch itself do not make another run.
    same = replace(cfg, run_name="again", resume=False)
    assert config_digest(same) == config_digest(cfg)
    assert config_digest(replace(cfg, rounds=5)) != config_digest(cfg)


def test_a_corrupt_last_checkpoint_falls_back_to_the_one_before(tmp_path: Path) -> None:
    cfg = _cfg(tmp_path)
    run_id = _record(tmp_path, cfg, 3, None)
    path = _checkpoint(tmp_path, run_id, 3)
    path.write_bytes(path.read_bytes()[:-7] + b"garbage")
    found = _find(tmp_path, cfg)
    assert found is not None
    assert (found.server_round, found.corrupt) == (2, (3,))
    assert found.state is not None and np.array_equal(found.state["b"], np.full(3, -2.0))
    assert [d["server_round"] for d in found.rounds] == [1, 2]


def test_no_usable_checkpoint_or_another_model_is_a_one_line_error(tmp_path: Path) -> None:
    cfg = _cfg(tmp_path)
    run_id = _record(tmp_path, cfg, 2, "KILLED")
    with pytest.raises(AppError, match=r"does not fit this run's.*training\.resume to false"):
        find_resumable(open_writer(tmp_path / "store", cfg.experiment), cfg,
                       {"w": (8, 8), "b": (3,)})
    for n in (1, 2):
        _checkpoint(tmp_path, run_id, n).unlink()
    with pytest.raises(AppError, match=f"run {run_id} has 2 committed round.*backup") as err:
        _find(tmp_path, cfg)
    assert "\n" not in str(err.value)


def test_reopening_makes_the_run_active_and_counts_the_resumes(tmp_path: Path) -> None:
    cfg = _cfg(tmp_path)
    run_id = _record(tmp_path, cfg, 1, "KILLED")
    writer = open_writer(tmp_path / "store", cfg.experiment)
    found = find_resumable(writer, cfg, SHAPES)
    assert found is not None
    assert reopen(writer, found, 22) == run_id
    writer.log_round(RoundRecord(2, METRICS, ({"participant": "b", "num_examples": 3},)),
                     _state(2))
    writer.end_run("FINISHED")
    run = writer.client.get_run(run_id)
    assert run.info.status == "FINISHED"
    assert (run.data.tags[RESUMES_TAG], run.data.tags[FLOWER_RUNS_TAG]) == ("1", "11,22")
    # The participants seen before the resume are kept in the run's tag.
    assert run.data.tags["fedcloud.participants"] == "a,b"
    assert _find(tmp_path, cfg) is None  # finished now


def test_a_round_killed_during_its_commit_is_not_resumed_from(tmp_path: Path) -> None:
    from fl.app.store import round_tag

    cfg = _cfg(tmp_path)
    run_id = _record(tmp_path, cfg, 3, None)
    # Killed after round 3's artifacts and metrics, before its marker (written last).
    open_writer(tmp_path / "store", cfg.experiment).client.delete_tag(run_id, round_tag(3))
    found = _find(tmp_path, cfg)
    assert found is not None and (found.server_round, found.corrupt) == (2, ())


def test_fedcloud_up_says_which_run_it_resumes_before_anything_starts(tmp_path: Path) -> None:
    from fedcloud.core.config import from_mapping
    from fedcloud.core.stack import parse
    from fedcloud.federation import pending_resume

    values = {"limits": {"maxCost": 100, "maxLatencyMs": 300}, "stateDir": str(tmp_path),
              "registry": {"trackingUri": str(tmp_path / "store")},
              "participants": [{"name": "p", "location": {"region": "aws:us-east-1"},
                                "vms": [{"id": "vm-1", "host": "10.9.0.1", "state": "Active"}]}]}
    cfg = parse(from_mapping("t", "test.yaml", values))
    store = cfg.registry.location
    assert pending_resume(cfg, store) is None
    # What the federation will submit (tracking URI as the aggregator sees it aside).
    run_config = cfg.training.run_config(tracking_uri="elsewhere",
                                         experiment=cfg.registry.experiment, stack=cfg.stack)
    run_id = _record(tmp_path, replace(run_config, experiment=cfg.registry.experiment), 2,
                     "KILLED")
    said = pending_resume(cfg, store)
    assert said == (f"resuming run {run_id} (KILLED; rounds 1-2 committed, going on at round 3 "
                    f"of {cfg.training.rounds}); set fedcloud:training.resume: false to start "
                    "over")
    fresh = parse(from_mapping("t", "test.yaml", {**values, "training": {"resume": False}}))
    assert pending_resume(fresh, store) is None
