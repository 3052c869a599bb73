"""BoundedFedAvg and a participant that was lost and rejoined: top-up, re-admission, contributors.

A Grid double lists nodes with their last activation (as Flower 1.41's ``Grid.get_nodes`` does);
replies are duck-typed stand-ins for Flower messages (only what the strategy reads).
"""

from __future__ import annotations

import datetime as dt
import time
from dataclasses import replace
from types import SimpleNamespace
from typing import Any

import pytest
from flwr.proto.node_pb2 import NodeInfo

from fl.app.records import CONTRIBUTORS, MISSING, RoundRecord
from fl.app.runconfig import RunConfig
from fl.app.strategy import BoundedFedAvg, NodesLostError

NAMES = {1: "hospital-us", 2: "hospital-kr", 3: "hospital-de"}


def _cfg(**changes: Any) -> RunConfig:
    base = RunConfig(model="covid_cnn", width=4, image_size=32, num_classes=3, rounds=3,
                     local_epochs=1, batch_size=8, learning_rate=0.05, fraction_train=1.0,
                     min_nodes=3, phase_timeout_s=1, node_wait_s=2, seed=1)
    return replace(base, **changes)


def _iso(epoch: float) -> str:
    return dt.datetime.fromtimestamp(epoch, dt.UTC).isoformat()


def _reply(node: int, train: bool = True) -> Any:
    metrics: dict[str, Any]
    if train:
        metrics = {"num-examples": 10, "train-loss": 0.5, "train-time-s": 1.0, "delay-s": 0.0}
    else:
        metrics = {"num-examples": 3, "eval-loss": 0.7, "confusion": [1, 0, 0, 0, 1, 0, 0, 0, 1]}
    content = SimpleNamespace(metric_records={"metrics": metrics},
                              config_records={"client": {"participant": NAMES[node]}})
    return SimpleNamespace(metadata=SimpleNamespace(src_node_id=node), content=content,
                           has_error=lambda: False)


class _Grid:
    """Nodes with their last activation; node 2 re-activates at ``rejoin_at`` (epoch)."""

    def __init__(self, start: float, rejoin_at: float | None) -> None:
        self.start = start
        self.rejoin_at = rejoin_at
        self.resent: list[list[int]] = []

    def get_nodes(self) -> list[NodeInfo]:
        now = time.time()
        out = []
        for node in NAMES:
            came = self.start
            if node == 2 and self.rejoin_at is not None and now >= self.rejoin_at:
                came = self.rejoin_at
            out.append(NodeInfo(node_id=node, last_activated_at=_iso(came)))
        return out

    def send_and_receive(self, messages: list[int], *, timeout: float) -> list[Any]:
        self.resent.append(list(messages))
        return [_reply(n) for n in messages]


def _strategy(cfg: RunConfig, grid: _Grid, sent_at: float) -> BoundedFedAvg:
    strategy = BoundedFedAvg(cfg, store=None)
    strategy.grid = grid  # type: ignore[assignment]
    strategy.sent["train"] = [1, 2, 3]
    strategy.sent_at["train"] = sent_at
    strategy.phase_args["train"] = (None, None, "train")  # type: ignore[assignment]
    # The messages are node ids here: the double's send_and_receive answers for each.
    strategy._messages = lambda rnd, arrays, config, nodes, kind: list(nodes)  # type: ignore
    return strategy


def test_a_lost_node_that_rejoins_is_sent_the_phase_again() -> None:
    sent_at = time.time() - 60
    grid = _Grid(start=sent_at - 600, rejoin_at=time.time() + 0.5)
    strategy = _strategy(_cfg(), grid, sent_at)
    valid = strategy._account("train", 2, [_reply(1), _reply(3)])  # node 2 was killed
    assert sorted(int(m.metadata.src_node_id) for m in valid) == [1, 2, 3]
    assert grid.resent == [[2]]
    assert strategy.missed["train"] == [] and 2 not in strategy.dropped


def test_a_lost_node_that_never_rejoins_ends_the_run_within_node_wait() -> None:
    sent_at = time.time() - 60
    strategy = _strategy(_cfg(node_wait_s=0.5), _Grid(sent_at - 600, None), sent_at)
    started = time.monotonic()
    with pytest.raises(NodesLostError, match="2 valid repl"):
        strategy._account("train", 2, [_reply(1), _reply(3)])
    assert time.monotonic() - started < 2.0


def test_no_top_up_while_min_nodes_replied_and_the_rejoined_node_is_sampled_again() -> None:
    sent_at = time.time() - 60
    grid = _Grid(start=sent_at - 600, rejoin_at=None)
    strategy = _strategy(_cfg(min_nodes=2), grid, sent_at)
    strategy._account("train", 2, [_reply(1), _reply(3)])
    assert grid.resent == [] and strategy.dropped == {2}
    assert strategy.select_nodes(grid, "evaluate", 2) == [1, 3]  # type: ignore[arg-type]
    grid.rejoin_at = time.time()  # its supervisor's restart was accepted
    assert strategy.select_nodes(grid, "train", 3) == [1, 2, 3]  # type: ignore[arg-type]
    assert strategy.dropped == set()


def test_the_round_record_names_contributors_and_missing_participants() -> None:
    sent_at = time.time() - 60
    grid = _Grid(start=sent_at - 600, rejoin_at=None)
    strategy = _strategy(_cfg(min_nodes=2), grid, sent_at)
    strategy._account("train", 2, [_reply(1), _reply(3)])
    strategy.train_stats = {}
    strategy.sent["evaluate"] = [1, 3]
    strategy.aggregate_evaluate(2, [_reply(1, train=False), _reply(3, train=False)])
    record: RoundRecord = strategy.pending[2]
    assert record.contributors == ("hospital-de", "hospital-us")
    assert record.extra[CONTRIBUTORS] == ["hospital-de", "hospital-us"]
    assert record.extra["evaluated_by"] == ["hospital-de", "hospital-us"]
    assert record.extra[MISSING] == ["node 2"]  # never replied before: known by its id only
