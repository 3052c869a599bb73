"""float16 on the wire trains like float32: participants send updates, not trained models.

The real ClientApp in this process (``tests/fl/app/inprocess.py``), three participants, plain
rounds: a float16 run ends within a small distance of the float32 run, and far closer than the
same run's global models would be if each round rounded the whole model to float16.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from flwr.supercore.task_identity import TaskIdentity

from fedcloud.local.synth import generate
from fl.app import task
from fl.app.runconfig import RunConfig
from fl.app.strategy import BoundedFedAvg
from tests.fl.app.inprocess import InProcessGrid


@pytest.fixture(autouse=True)
def _task_identity(monkeypatch: pytest.MonkeyPatch) -> None:
    for attr in ("_run_id", "_node_id", "_task_id"):
        monkeypatch.setattr(TaskIdentity, attr, 1)


def _final(cfg: RunConfig, dirs: list[Path], cache: Path) -> dict[str, np.ndarray]:
    torch.manual_seed(cfg.seed)
    model = task.build_model(cfg.model_spec())
    initial = {k: v.detach().numpy().copy() for k, v in model.state_dict().items()}
    grid = InProcessGrid(cfg, dirs, cache)
    return BoundedFedAvg(cfg, None).run(grid, initial)  # type: ignore[arg-type]


def test_float16_updates_end_close_to_the_float32_run(tmp_path: Path) -> None:
    dirs = generate("covid", tmp_path / "data", ["p1", "p2", "p3"], 24, 6, image_size=32, seed=2)
    cfg = RunConfig(model="covid_cnn", width=4, image_size=32, num_classes=3, rounds=3,
                    local_epochs=1, batch_size=4, learning_rate=0.0005, fraction_train=1.0,
                    min_nodes=3, phase_timeout_s=5, node_wait_s=0, seed=1,
                    secure_aggregation=False)
    data = [dirs[p] for p in ("p1", "p2", "p3")]
    f32 = _final(cfg, data, tmp_path / "cache")
    f16 = _final(replace(cfg, wire_dtype="float16"), data, tmp_path / "cache")
    moved = max(float(np.abs(f32[k] - _final(replace(cfg, rounds=1), data, tmp_path / "c")[k])
                     .max()) for k in f32)
    diff = max(float(np.abs(f16[k] - f32[k]).max()) for k in f32)
    assert moved > 0
    # Within 3% of how far rounds 2-3 moved the weights (measured: 1.1%; sending the trained
    # model in float16 instead, 6.9%: a small step of a large weight rounds away).
    assert diff <= 0.03 * moved, (diff, moved)
