"""The ServerApp's strategy: FedAvg with bounded waits and one :class:`RoundRecord` per round.

:class:`BoundedFedAvg` waits at most ``node-wait-s`` for ``min-nodes`` nodes in each phase
(Flower's own sampling waits forever), re-sends a phase to nodes that were lost and rejoined,
raises :class:`NodesLostError` when too few remain, records who contributed, and checkpoints
every round to the :class:`fl.app.records.RoundStore`. See fl/README.md, "Bounds (nothing
waits forever)" and "Per-round records".
"""

from __future__ import annotations

import datetime as dt
import json
import random
import time
from collections.abc import Iterable, Mapping
from logging import INFO, WARNING
from typing import Any

import numpy as np
from flwr.app import ArrayRecord, ConfigRecord, Message, MessageType, MetricRecord, RecordDict
from flwr.common import log
from flwr.serverapp import Grid
from flwr.serverapp.strategy import FedAvg

from fl.app import task
from fl.app.records import CONTRIBUTORS, METRICS, MISSING, RoundRecord, RoundStore
from fl.app.runconfig import ROUND_MARK, RunConfig

NODE_POLL_S = 1.0


class NodesLostError(RuntimeError):
    """Fewer than ``min-nodes`` participants are connected or replying."""


class BoundedFedAvg(FedAvg):
    """FedAvg whose node sampling and reply counting are bounded and tracked.

    Args:
        cfg: The run config.
        store: Where rounds are recorded (``None``: only the log line).
    """

    def __init__(self, cfg: RunConfig, store: RoundStore | None) -> None:
        super().__init__(fraction_train=cfg.fraction_train, fraction_evaluate=1.0,
                         min_train_nodes=cfg.min_nodes, min_evaluate_nodes=cfg.min_nodes,
                         min_available_nodes=cfg.min_nodes)
        self.cfg = cfg
        self.store = store
        self.dropped: set[int] = set()
        self.sent: dict[str, list[int]] = {}
        self.train_stats: dict[int, dict[str, Any]] = {}
        self.pending: dict[int, RoundRecord] = {}
        self.rounds: list[RoundRecord] = []
        self.phase_started = 0.0
        self.round_started = 0.0
        self.phase_s: dict[str, float] = {}
        self.grid: Grid | None = None
        self.phase_args: dict[str, tuple[ArrayRecord, ConfigRecord, str]] = {}
        self.sent_at: dict[str, float] = {}
        self.dropped_at: dict[int, float] = {}
        self.names: dict[int, str] = {}
        self.replied: dict[str, list[int]] = {}
        self.missed: dict[str, list[int]] = {}

    # -- sampling ---------------------------------------------------------------------------

    def select_nodes(self, grid: Grid, phase: str, server_round: int) -> list[int]:
        """Wait at most ``node-wait-s`` for ``min-nodes`` usable nodes and sample them.

        Raises:
            NodesLostError: Still fewer than ``min-nodes`` connected after the wait.
        """
        need = self.cfg.min_nodes
        deadline = time.monotonic() + self.cfg.node_wait_s
        while True:
            activated = online_nodes(grid)
            self._readmit_rejoined(activated)
            online = sorted(activated)
            usable = [n for n in online if n not in self.dropped]
            if len(usable) < need <= len(online):
                usable = online  # re-admit nodes that missed a phase rather than stop
            if len(usable) >= need:
                break
            if time.monotonic() >= deadline:
                raise NodesLostError(
                    f"round {server_round} {phase}: {len(online)} node(s) connected after "
                    f"waiting {self.cfg.node_wait_s:g} s; at least {need} needed")
            log(INFO, "%s round %s: %d of %d nodes connected, waiting (up to %.0f s)",
                phase, server_round, len(usable), need, deadline - time.monotonic())
            time.sleep(NODE_POLL_S)
        fraction = self.cfg.fraction_train if phase == "train" else 1.0
        size = min(len(usable), max(int(len(usable) * fraction), need))
        chosen = sorted(random.Random(self.cfg.seed * 1000 + server_round).sample(usable, size))
        self.sent[phase] = chosen
        self.sent_at[phase] = time.time()
        self.phase_started = time.monotonic()
        if phase == "train":
            self.round_started = self.phase_started
        log(INFO, "%s round %s: sent to %d of %d connected nodes", phase, server_round,
            len(chosen), len(online))
        return chosen

    def _readmit_rejoined(self, activated: Mapping[int, float | None]) -> None:
        """Take back a dropped node that activated again after the phase it missed."""
        for node in sorted(self.dropped):
            since = self.dropped_at.get(node)
            came = activated.get(node)
            if since is not None and came is not None and came > since:
                self.dropped.discard(node)
                self.dropped_at.pop(node, None)
                log(INFO, "node %s (%s) rejoined; sampling it again", node,
                    self.names.get(node, "?"))

    def _messages(self, server_round: int, arrays: ArrayRecord, config: ConfigRecord,
                  node_ids: list[int], message_type: str) -> Iterable[Message]:
        config["server-round"] = server_round
        record = RecordDict({self.arrayrecord_key: arrays, self.configrecord_key: config})
        return self._construct_messages(record, node_ids, message_type)

    def configure_train(self, server_round: int, arrays: ArrayRecord, config: ConfigRecord,
                        grid: Grid) -> Iterable[Message]:
        """Sample nodes (bounded wait) and build the train messages."""
        self.grid = grid
        nodes = self.select_nodes(grid, "train", server_round)
        self.phase_args["train"] = (arrays, config, MessageType.TRAIN)
        return self._messages(server_round, arrays, config, nodes, MessageType.TRAIN)

    def configure_evaluate(self, server_round: int, arrays: ArrayRecord, config: ConfigRecord,
                           grid: Grid) -> Iterable[Message]:
        """Sample nodes (bounded wait) and build the evaluate messages."""
        self.grid = grid
        nodes = self.select_nodes(grid, "evaluate", server_round)
        self.phase_args["evaluate"] = (arrays, config, MessageType.EVALUATE)
        return self._messages(server_round, arrays, config, nodes, MessageType.EVALUATE)

    def _top_up(self, phase: str, server_round: int, valid: list[Message],
                missing: list[int]) -> list[Message]:
        """Re-send the phase to lost nodes that rejoined (at most ``node-wait-s`` for them).

        Only when fewer than ``min-nodes`` replies are valid; returns the new valid replies.
        """
        if self.grid is None or phase not in self.phase_args:
            return []
        sent_at = self.sent_at.get(phase, 0.0)
        deadline = time.monotonic() + self.cfg.node_wait_s
        back: list[int] = []
        while True:
            activated = online_nodes(self.grid)
            back = [n for n in missing if (activated.get(n) or 0.0) > sent_at]
            if len(valid) + len(back) >= self.cfg.min_nodes or len(back) == len(missing):
                break
            if time.monotonic() >= deadline:
                break
            log(INFO, "%s round %s: waiting for lost node(s) %s to rejoin (up to %.0f s)",
                phase, server_round, [n for n in missing if n not in back],
                deadline - time.monotonic())
            time.sleep(NODE_POLL_S)
        if not back:
            return []
        arrays, config, message_type = self.phase_args[phase]
        log(INFO, "%s round %s: re-sending to rejoined node(s) %s", phase, server_round, back)
        messages = self._messages(server_round, arrays, config, back, message_type)
        replies = self.grid.send_and_receive(messages, timeout=self.cfg.phase_timeout_s)
        return [m for m in replies if not m.has_error() and int(m.metadata.src_node_id) in back]

    def _account(self, phase: str, server_round: int, replies: list[Message]) -> list[Message]:
        """Keep valid replies, top up from rejoined nodes, mark silent ones, enforce the minimum."""
        valid = [m for m in replies if not m.has_error()]
        # Error replies of a dead node carry the SuperLink's id: count by whom we sent to.
        answered = {int(m.metadata.src_node_id) for m in valid}
        missing = [n for n in self.sent.get(phase, []) if n not in answered]
        if missing and len(valid) < self.cfg.min_nodes:
            valid += self._top_up(phase, server_round, valid, missing)
            answered = {int(m.metadata.src_node_id) for m in valid}
            missing = [n for n in missing if n not in answered]
        for msg in valid:
            client = msg.content.config_records.get("client")
            if client is not None and client.get("participant"):
                self.names[int(msg.metadata.src_node_id)] = str(client["participant"])
        for node in missing:
            self.dropped.add(node)
            self.dropped_at[node] = self.sent_at.get(phase, 0.0)
        self.dropped -= answered
        self.replied[phase] = sorted(answered)
        self.missed[phase] = missing
        waited = time.monotonic() - self.phase_started
        self.phase_s[phase] = waited
        if missing:
            log(WARNING, "%s round %s: no reply from node(s) %s after %.1f s; skipping them "
                "while enough others are online", phase, server_round, missing, waited)
        if len(valid) < self.cfg.min_nodes:
            raise NodesLostError(
                f"round {server_round} {phase}: {len(valid)} valid repl(ies) within "
                f"{self.cfg.phase_timeout_s:g} s; at least {self.cfg.min_nodes} needed")
        return valid

    def _who(self, nodes: Iterable[int]) -> list[str]:
        return sorted(self.names.get(n, f"node {n}") for n in nodes)

    # -- aggregation ------------------------------------------------------------------------

    def aggregate_train(self, server_round: int, replies: Iterable[Message],
                        ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        """FedAvg the valid replies and keep each client's training figures."""
        valid = self._account("train", server_round, list(replies))
        self.train_stats = {}
        for msg in valid:
            metrics = msg.content.metric_records["metrics"]
            self.train_stats[int(msg.metadata.src_node_id)] = {
                "train_loss": _num(metrics["train-loss"]),
                "train_time_s": _num(metrics["train-time-s"]),
                "delay_s": _num(metrics["delay-s"]),
                "train_examples": int(_num(metrics["num-examples"])),
            }
        return super().aggregate_train(server_round, valid)

    def aggregate_evaluate(self, server_round: int, replies: Iterable[Message],
                           ) -> MetricRecord | None:
        """Global metrics from the summed confusion matrices, plus per-client figures."""
        valid = self._account("evaluate", server_round, list(replies))
        k = self.cfg.num_classes
        per_client: list[dict[str, Any]] = []
        evals: list[tuple[int, float, np.ndarray]] = []
        for msg in sorted(valid, key=lambda m: int(m.metadata.src_node_id)):
            node = int(msg.metadata.src_node_id)
            metrics = msg.content.metric_records["metrics"]
            num = int(_num(metrics["num-examples"]))
            loss = _num(metrics["eval-loss"])
            cm = np.asarray(metrics["confusion"], dtype=np.int64).reshape(k, k)
            evals.append((num, loss, cm))
            client = {"participant": str(msg.content.config_records["client"]["participant"]),
                      "node_id": node, "num_examples": num, "loss": loss,
                      **task.metrics_from_confusion(cm), **self.train_stats.get(node, {})}
            per_client.append(client)
        agg = task.aggregate_evaluations(evals)
        stats = list(self.train_stats.values())
        extra = {
            "train_nodes": len(stats),
            "max_client_train_s": max((s["train_time_s"] for s in stats), default=0.0),
            "max_client_delay_s": max((s["delay_s"] for s in stats), default=0.0),
            "dropped_nodes": sorted(self.dropped),
            "train_phase_s": self.phase_s.get("train", 0.0),
            "evaluate_phase_s": self.phase_s.get("evaluate", 0.0),
            # Who contributed: the participants whose train replies were aggregated.
            CONTRIBUTORS: self._who(self.replied.get("train", [])),
            "evaluated_by": self._who(self.replied.get("evaluate", [])),
            MISSING: self._who(set(self.missed.get("train", []))
                               | set(self.missed.get("evaluate", []))),
        }
        record = RoundRecord(
            server_round=server_round,
            metrics={name: float(agg[name]) for name in METRICS},
            per_client=tuple(per_client),
            confusion=tuple(tuple(int(v) for v in row) for row in agg["confusion"]),
            extra=extra,
        )
        self.pending[server_round] = record
        return MetricRecord({name: float(agg[name]) for name in METRICS})

    # -- per-round checkpoint (FedAvg.start calls this after every round) ------------------

    def checkpoint(self, server_round: int, arrays: ArrayRecord) -> MetricRecord | None:
        """Record the round's metrics and the global model; print the round line."""
        record = self.pending.pop(server_round, None)
        if record is None:
            return None  # round 0 (the initial model): nothing evaluated yet
        if self.store is not None:
            self.store.log_round(record, arrays.to_torch_state_dict())
        extra = {**record.extra, "round_wall_s": time.monotonic() - self.round_started}
        record = RoundRecord(server_round=record.server_round, metrics=record.metrics,
                             per_client=record.per_client, confusion=record.confusion,
                             extra=extra)
        self.rounds.append(record)
        line = {"round": record.server_round, "metrics": dict(record.metrics),
                "per_client": list(record.per_client), "confusion": record.confusion,
                **record.extra}
        log(INFO, "%s %s", ROUND_MARK, json.dumps(line, sort_keys=True))
        return MetricRecord(dict(record.metrics))


def online_nodes(grid: Grid) -> dict[int, float | None]:
    """Node id -> epoch seconds of its last activation (``None`` if the grid does not say).

    A node that died and came back holds a later activation than the phase it missed.
    """
    get_nodes = getattr(grid, "get_nodes", None)
    if get_nodes is None:  # a grid that only lists ids: no rejoin is seen
        return {int(n): None for n in grid.get_node_ids()}
    out: dict[int, float | None] = {}
    for info in get_nodes():
        out[int(info.node_id)] = _epoch(str(getattr(info, "last_activated_at", "") or ""))
    return out


def _epoch(text: str) -> float | None:
    try:
        stamp = dt.datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        return None
    if stamp.tzinfo is None:
        stamp = stamp.replace(tzinfo=dt.UTC)
    return stamp.timestamp()


def _num(value: object) -> float:
    """Return a scalar record value as float (records are typed as unions of lists too)."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise TypeError(f"expected a number in the reply, got {value!r}")
    return float(value)
