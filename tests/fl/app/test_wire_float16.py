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
from flwr.app import Array, ArrayRecord, ConfigRecord, Context, Message, MessageType, RecordDict
from flwr.supercore.task_identity import TaskIdentity

from fedcloud.local.synth import generate
from fl.app import task
from fl.app.client_app import received_model
from fl.app.errors import AppError
from fl.app.runconfig import RunConfig
from fl.app.strategy import BoundedFedAvg
from fl.app.wire import BASE_KEY, MODEL_KEY, Copies, add_step, digest, on_grid
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
    # Within 0.3% of how far rounds 2-3 moved the weights (measured: 0.07%; sending the whole
    # global model in float16 every round, 1.1%; the trained model instead of the update,
    # 6.9%: a small step of a large weight rounds away).
    assert diff <= 0.003 * moved, (diff, moved)


def _content(copies: Copies, node: int) -> tuple[ArrayRecord, dict[str, str]]:
    content = copies.content(node, {"server-round": 2})
    held = {k: str(v) for k, v in content.config_records["config"].items() if k != "server-round"}
    return content.array_records["arrays"], held


def _message(arrays: ArrayRecord, held: dict[str, str]) -> Message:
    return Message(content=RecordDict({"arrays": arrays, "config": ConfigRecord(
        {"server-round": 2, **held})}), dst_node_id=1, message_type=MessageType.TRAIN)


def _context(cache: Path) -> Context:
    return Context(run_id=1, node_id=1, state=RecordDict(), run_config={},
                   node_config={"cache-dir": str(cache / "data")})


def test_a_node_holding_the_last_model_gets_only_the_step_and_rebuilds_it_bitwise(
        tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    first = on_grid({"w": rng.normal(size=(64, 8)).astype(np.float32),
                     "n": np.array(3, dtype=np.int64)}, "float16")
    copies = Copies("float16")
    copies.send(first, exact=True)
    whole, held = _content(copies, 1)
    assert whole["w"].dtype == "float16" and BASE_KEY not in held  # exact on the grid
    node, fresh = _context(tmp_path / "node"), _context(tmp_path / "fresh")
    first_message = _message(whole, held)
    assert digest(received_model(first_message, node)) == digest(first)
    copies.answered([1], missed=[2])
    step = on_grid({"w": rng.normal(scale=1e-3, size=(64, 8)).astype(np.float32),
                    "n": np.array(1, dtype=np.int64)}, "float16")
    second = add_step(first, step)
    copies.send(second, step)
    arrays, held = _content(copies, 1)
    assert held == {MODEL_KEY: digest(second), BASE_KEY: digest(first)}
    assert arrays["w"].dtype == "float16"
    rebuilt = received_model(_message(arrays, held), node)
    assert all(np.array_equal(rebuilt[k], second[k]) for k in second)
    # The same message again (a secure round run again, a re-send): the model it already made.
    again = received_model(_message(arrays, held), node)
    assert all(np.array_equal(again[k], second[k]) for k in second)
    kept = list((tmp_path / "node" / "data" / "models").iterdir())  # one: the newest model's
    assert [p.name for p in kept] == ["run-1-node-1.npz"] and kept[0].stat().st_mode & 0o077 == 0
    # Node 2 missed the last message and node 3 never had one: the whole model, in float32
    # (the sum is off float16's grid).
    for other in (2, 3):
        whole, other_held = _content(copies, other)
        assert whole["w"].dtype == "float32" and BASE_KEY not in other_held
    with pytest.raises(AppError, match="holds no copy"):
        received_model(_message(arrays, held), fresh)
    received_model(first_message, fresh)  # now it holds the first model, as node 1 did
    tampered = ArrayRecord({**dict(arrays.items()),
                            "w": Array.from_numpy_ndarray(np.zeros((64, 8), np.float16))})
    with pytest.raises(AppError, match="digest does not match"):
        received_model(_message(tampered, held), fresh)


def test_arrays_too_small_for_a_float32_scale_travel_as_zeros() -> None:
    tiny = {"w": np.full(4, 1e-34, np.float32), "z": np.zeros(3, np.float32)}
    once = on_grid(tiny, "float16")
    assert not once["w"].any() and digest(on_grid(once, "float16")) == digest(once)


def test_float32_runs_send_the_whole_model_and_keep_no_copy(tmp_path: Path) -> None:
    copies = Copies("float32")
    model = {"w": np.ones((2, 2), np.float32)}
    copies.send(model)
    copies.answered([1])
    copies.send({"w": model["w"] * 2}, {"w": model["w"]})
    arrays, held = _content(copies, 1)
    assert held == {} and arrays["w"].dtype == "float32"
    assert received_model(_message(arrays, held), _context(tmp_path))["w"][0, 0] == 2.0
    assert not any(tmp_path.iterdir())
