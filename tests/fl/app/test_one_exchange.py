"""One exchange per round: what the strategy sends, what each record's metrics belong to, float16.

A Grid double plays three participants on real Flower messages: each "trains" by returning an
update of its node id on every element and "evaluates" by reporting the received model's mean as
its loss, so every figure can be traced to the model it came from.
"""

from __future__ import annotations

from dataclasses import replace
from itertools import count
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest
from flwr.app import Message, MessageType
from flwr.supercore.task_identity import TaskIdentity

from fl.app.protocol import traffic
from fl.app.records import RoundRecord
from fl.app.runconfig import RunConfig
from fl.app.strategy import BoundedFedAvg
from fl.app.wire import SCALE_SUFFIX, from_record, to_record, weighted_mean

EXAMPLES = {1: 10, 2: 20, 3: 30}


class _Store:
    def __init__(self) -> None:
        self.rounds: list[tuple[RoundRecord, dict[str, np.ndarray]]] = []

    def log_round(self, record: RoundRecord, state: dict[str, np.ndarray]) -> None:
        self.rounds.append((record, {k: np.array(v) for k, v in state.items()}))


class _Participants:
    """Grid double: answers every pushed message at once, counts exchanges and wire dtypes."""

    def __init__(self) -> None:
        self.ids = count(1)
        self.replies: dict[str, Any] = {}
        self.pushes: list[tuple[str, list[int]]] = []
        self.wire_dtypes: set[str] = set()

    def get_node_ids(self) -> list[int]:
        return list(EXAMPLES)

    def push_messages(self, messages: list[Message]) -> list[str]:
        self.pushes.append((messages[0].metadata.message_type,
                            [m.metadata.dst_node_id for m in messages]))
        ids = []
        for msg in messages:
            mid = f"m{next(self.ids)}"
            self.replies[mid] = self._answer(msg, mid)
            ids.append(mid)
        return ids

    def pull_messages(self, ids: list[str]) -> list[Any]:
        return [self.replies.pop(i) for i in ids if i in self.replies]

    def _answer(self, msg: Message, mid: str) -> Any:
        node = msg.metadata.dst_node_id
        record = msg.content.array_records["arrays"]
        self.wire_dtypes |= {a.numpy().dtype.name for k, a in record.items()
                             if not k.endswith(SCALE_SUFFIX)}
        received = from_record(record)
        metrics: dict[str, Any] = {"eval-examples": 3, "eval-time-s": 0.0,
                                   "eval-loss": float(received["w"].mean()),
                                   "confusion": [1, 0, 0, 0, 1, 0, 0, 0, 1]}
        arrays = {}
        if msg.metadata.message_type == MessageType.TRAIN:
            metrics.update({"num-examples": EXAMPLES[node], "train-loss": 0.1,
                            "train-time-s": 0.0, "delay-s": 0.0})
            update = {k: np.full_like(v, node) for k, v in received.items()}  # its update
            arrays = {"arrays": to_record(update, "float32")}
        content = SimpleNamespace(metric_records={"metrics": metrics}, array_records=arrays,
                                  config_records={"client": {"participant": f"p{node}"}})
        meta = SimpleNamespace(src_node_id=node, reply_to_message_id=mid)
        return SimpleNamespace(metadata=meta, content=content, has_error=lambda: False)


@pytest.fixture(autouse=True)
def _task_identity(monkeypatch: pytest.MonkeyPatch) -> None:
    # Flower sets the task identity in its ServerApp process; messages need it to be built.
    for attr in ("_run_id", "_node_id", "_task_id"):
        monkeypatch.setattr(TaskIdentity, attr, 1)


def _cfg(**changes: Any) -> RunConfig:
    base = RunConfig(model="covid_cnn", width=4, image_size=32, num_classes=3, rounds=3,
                     local_epochs=1, batch_size=8, learning_rate=0.05, fraction_train=1.0,
                     min_nodes=3, phase_timeout_s=5, node_wait_s=1, seed=1,
                     secure_aggregation=False)  # the plain exchange (secure: test_secure_round)
    return replace(base, **changes)


def _run(cfg: RunConfig) -> tuple[_Participants, _Store, dict[str, np.ndarray]]:
    grid, store = _Participants(), _Store()
    strategy = BoundedFedAvg(cfg, store)
    initial = {"w": np.full((4, 4), 0.5, np.float32), "b": np.zeros(3, np.float32)}
    final = strategy.run(grid, initial)  # type: ignore[arg-type]
    return grid, store, final


def test_each_round_is_one_exchange_plus_one_final_evaluation() -> None:
    grid, _, _ = _run(_cfg())
    kinds = [kind for kind, _ in grid.pushes]
    assert kinds == [MessageType.TRAIN] * 3 + [MessageType.EVALUATE]
    assert all(nodes == [1, 2, 3] for _, nodes in grid.pushes)
    declared = traffic("float32")
    assert declared.phases_per_round == 1 and declared.round_copies() == 2


def test_each_record_holds_its_own_global_models_metrics_and_weights() -> None:
    _, store, final = _run(_cfg())
    mean_shift = sum(n * e for n, e in EXAMPLES.items()) / sum(EXAMPLES.values())  # 14/6
    assert [r.server_round for r, _ in store.rounds] == [1, 2, 3]
    for rnd, (record, state) in enumerate(store.rounds, start=1):
        expected = 0.5 + rnd * mean_shift  # round r's global model = initial + r FedAvg steps
        assert state["w"] == pytest.approx(np.full((4, 4), expected), abs=1e-5)
        # The loss reported for round r is the evaluation of round r's model, not r-1's.
        assert record.metrics["loss"] == pytest.approx(expected, abs=1e-5)
        assert record.extra["contributors"] == ["p1", "p2", "p3"]
    assert final["w"].dtype == np.float32
    assert np.array_equal(final["w"], store.rounds[-1][1]["w"])


def test_float16_on_the_wire_float32_in_aggregation() -> None:
    grid, store, final = _run(_cfg(wire_dtype="float16"))
    assert grid.wire_dtypes == {"float16"}
    assert final["w"].dtype == np.float32
    assert store.rounds[-1][1]["w"].dtype == np.float32
    assert traffic("float16").copy_bytes(1000) == 500


def test_float16_keeps_three_digits_of_small_values() -> None:
    # An update's values sit far below float16's normal range (6.1e-5); scaled, they keep
    # float16's relative precision (2**-11) of the array's largest value.
    update = {"w": np.array([3e-7, -2e-6, 5e-8, 1e-9], np.float32), "n": np.array([7])}
    back = from_record(to_record(update, "float16"))
    assert set(back) == {"w", "n"} and back["n"].tolist() == [7]
    assert np.abs(back["w"] - update["w"]).max() <= 2e-6 * 2.0**-11
    plain_f16 = update["w"].astype(np.float16).astype(np.float32)  # what an unscaled cast keeps
    assert np.abs(plain_f16 - update["w"]).max() > 100 * np.abs(back["w"] - update["w"]).max()


def test_weighted_mean_is_fedavg_and_refuses_mismatched_updates() -> None:
    a, b = {"w": np.array([1.0, 3.0], np.float32)}, {"w": np.array([3.0, 5.0], np.float32)}
    assert weighted_mean([a, b], [1, 3])["w"].tolist() == [2.5, 4.5]
    with pytest.raises(ValueError, match="another shape"):
        weighted_mean([a, {"w": np.zeros(3, np.float32)}], [1, 1])
    with pytest.raises(ValueError, match="sum to 0"):
        weighted_mean([a], [0])


def test_a_resumed_run_goes_on_from_its_committed_round_to_the_same_weights() -> None:
    _, whole, _ = _run(_cfg())
    grid, store = _Participants(), _Store()
    state = whole.rounds[0][1]  # round 1's committed weights
    final = BoundedFedAvg(_cfg(), store).run(grid, state, first_round=2)  # type: ignore[arg-type]
    assert [r.server_round for r, _ in store.rounds] == [2, 3]
    for (got, got_state), (want, want_state) in zip(store.rounds, whole.rounds[1:], strict=True):
        assert np.array_equal(got_state["w"], want_state["w"])
        assert got.metrics["loss"] == pytest.approx(want.metrics["loss"])
    assert np.array_equal(final["w"], whole.rounds[-1][1]["w"])
    assert [kind for kind, _ in grid.pushes] == [MessageType.TRAIN] * 2 + [MessageType.EVALUATE]
    # Everything committed already: nothing is sent.
    done = _Participants()
    BoundedFedAvg(_cfg(), _Store()).run(done, state, first_round=4)  # type: ignore[arg-type]
    assert done.pushes == []
