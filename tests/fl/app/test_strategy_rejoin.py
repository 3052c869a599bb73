"""BoundedFedAvg and a participant that was lost and rejoined: top-up, re-admission, contributors.

A Grid double lists nodes with their last activation (as Flower 1.41's ``Grid.get_nodes`` does)
and answers pushed messages through ``pull_messages``; replies are duck-typed stand-ins for
Flower messages (only what the strategy reads).
"""

from __future__ import annotations

import datetime as dt
import time
from dataclasses import replace
from itertools import count
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest
from flwr.proto.node_pb2 import NodeInfo

from fl.app.records import CONTRIBUTORS, MISSING
from fl.app.runconfig import RunConfig
from fl.app.strategy import TRAIN, Aggregated, BoundedFedAvg, NodesLostError

NAMES = {1: "hospital-us", 2: "hospital-kr", 3: "hospital-de"}
EVAL = {"eval-examples": 3, "eval-loss": 0.7, "confusion": [1, 0, 0, 0, 1, 0, 0, 0, 1],
        "eval-time-s": 0.1}


def _cfg(**changes: Any) -> RunConfig:
    base = RunConfig(model="covid_cnn", width=4, image_size=32, num_classes=3, rounds=3,
                     local_epochs=1, batch_size=8, learning_rate=0.05, fraction_train=1.0,
                     min_nodes=3, phase_timeout_s=1, node_wait_s=2, seed=1,
                     secure_aggregation=False)  # the plain exchange
    return replace(base, **changes)


def _iso(epoch: float) -> str:
    return dt.datetime.fromtimestamp(epoch, dt.UTC).isoformat()


def _reply(node: int, reply_to: str = "") -> Any:
    metrics = {"num-examples": 10, "train-loss": 0.5, "train-time-s": 1.0, "delay-s": 0.0,
               **EVAL}
    content = SimpleNamespace(metric_records={"metrics": metrics},
                              config_records={"client": {"participant": NAMES[node]}})
    return SimpleNamespace(metadata=SimpleNamespace(src_node_id=node, reply_to_message_id=reply_to),
                           content=content, has_error=lambda: False)


class _Grid:
    """Nodes with their last activation; node 2 re-activates at ``rejoin_at`` (epoch)."""

    def __init__(self, start: float, rejoin_at: float | None) -> None:
        self.start = start
        self.rejoin_at = rejoin_at
        self.resent: list[list[int]] = []
        self.ids = count(1)
        self.replies: dict[str, Any] = {}

    def get_nodes(self) -> list[NodeInfo]:
        now = time.time()
        out = []
        for node in NAMES:
            came = self.start
            if node == 2 and self.rejoin_at is not None and now >= self.rejoin_at:
                came = self.rejoin_at
            out.append(NodeInfo(node_id=node, last_activated_at=_iso(came)))
        return out

    def push_messages(self, messages: list[int]) -> list[str]:
        self.resent.append(list(messages))
        ids = []
        for node in messages:
            mid = f"m{next(self.ids)}"
            self.replies[mid] = _reply(node, mid)
            ids.append(mid)
        return ids

    def pull_messages(self, ids: list[str]) -> list[Any]:
        return [self.replies.pop(i) for i in ids if i in self.replies]


def _strategy(cfg: RunConfig, grid: _Grid, sent_at: float) -> BoundedFedAvg:
    strategy = BoundedFedAvg(cfg, store=None)
    strategy.grid = grid  # type: ignore[assignment]
    strategy.sent[TRAIN] = [1, 2, 3]
    strategy.sent_at[TRAIN] = sent_at
    strategy.phase_args[TRAIN] = ({}, 2, "train")
    # The messages are node ids here: the double's pull answers for each.
    strategy._messages = lambda rnd, state, nodes, kind, sampled=None: list(nodes)  # type: ignore
    return strategy


def test_a_lost_node_that_rejoins_is_sent_the_phase_again() -> None:
    sent_at = time.time() - 60
    grid = _Grid(start=sent_at - 600, rejoin_at=time.time() + 0.5)
    strategy = _strategy(_cfg(), grid, sent_at)
    valid = strategy._account(TRAIN, 2, [_reply(1), _reply(3)])  # node 2 was killed
    assert sorted(int(m.metadata.src_node_id) for m in valid) == [1, 2, 3]
    assert grid.resent == [[2]]
    assert strategy.missed[TRAIN] == [] and 2 not in strategy.dropped


def test_a_lost_node_that_never_rejoins_ends_the_run_within_node_wait() -> None:
    sent_at = time.time() - 60
    strategy = _strategy(_cfg(node_wait_s=0.5), _Grid(sent_at - 600, None), sent_at)
    started = time.monotonic()
    with pytest.raises(NodesLostError, match="2 valid repl"):
        strategy._account(TRAIN, 2, [_reply(1), _reply(3)])
    assert time.monotonic() - started < 2.0


def test_no_top_up_while_min_nodes_replied_and_the_rejoined_node_is_sampled_again() -> None:
    sent_at = time.time() - 60
    grid = _Grid(start=sent_at - 600, rejoin_at=None)
    strategy = _strategy(_cfg(min_nodes=2), grid, sent_at)
    strategy._account(TRAIN, 2, [_reply(1), _reply(3)])
    assert grid.resent == [] and strategy.dropped == {2}
    assert strategy.select_nodes(grid, "evaluate", 2) == [1, 3]  # type: ignore[arg-type]
    grid.rejoin_at = time.time()  # its supervisor's restart was accepted
    assert strategy.select_nodes(grid, TRAIN, 3) == [1, 2, 3]  # type: ignore[arg-type]
    assert strategy.dropped == set()


def test_the_round_record_names_contributors_and_missing_participants() -> None:
    sent_at = time.time() - 60
    grid = _Grid(start=sent_at - 600, rejoin_at=None)
    strategy = _strategy(_cfg(min_nodes=2), grid, sent_at)
    valid = strategy._account(TRAIN, 2, [_reply(1), _reply(3)])
    done = Aggregated(2, {"w": np.zeros(2, np.float32)}, {}, {
        CONTRIBUTORS: strategy._who(strategy.replied[TRAIN]),
        MISSING: strategy._who(strategy.missed[TRAIN])})
    strategy._commit(done, strategy._evaluations(valid), strategy._who([1, 3]))
    record = strategy.rounds[-1]
    assert record.server_round == 2
    assert record.contributors == ("hospital-de", "hospital-us")
    assert record.extra[CONTRIBUTORS] == ["hospital-de", "hospital-us"]
    assert record.extra["evaluated_by"] == ["hospital-de", "hospital-us"]
    assert record.extra[MISSING] == ["node 2"]  # never replied before: known by its id only
