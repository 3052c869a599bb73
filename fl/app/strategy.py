"""The ServerApp's strategy: FedAvg in one exchange per round, bounded waits, one record per round.

:meth:`BoundedFedAvg.run` sends round r's global model once to the sampled nodes; each reply
holds the node's evaluation of that model and its trained update (``fl/app/protocol.py``). So
round r's replies carry the metrics of round r-1's global model, and one final evaluation gives
the last model's: round r's record is committed with its own model's metrics once they are in.
Waits are bounded by ``node-wait-s`` and ``phase-timeout-s``; lost nodes that rejoin are sent
the exchange again; too few replies raise :class:`NodesLostError`. With ``secure-aggregation``
the exchange is a SecAgg+ round (``fl/app/secure.py``) and only the sum is seen; differential
privacy is applied and accounted in ``fl/app/privacy.py``. See fl/README.md.
"""

from __future__ import annotations

import json
import random
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from functools import partial
from logging import INFO, WARNING
from typing import Any

import numpy as np
from flwr.app import Message, MessageType, RecordDict
from flwr.common import log
from flwr.serverapp import Grid

from fl.app import privacy, task
from fl.app.exchange import exchange, online_nodes
from fl.app.protocol import DP_SAMPLED, SECURE_ATTEMPTS
from fl.app.records import CONTRIBUTORS, METRICS, MISSING, RoundRecord, RoundStore
from fl.app.runconfig import ROUND_MARK, RunConfig
from fl.app.secure import (
    DEFAULT_CLIPPING_RANGE,
    DEFAULT_MAX_WEIGHT,
    SecureParams,
    SecureRound,
    SecureRoundError,
    choose_params,
    fitting,
)
from fl.app.wire import Copies, State, add_step, from_record, on_grid, weighted_mean

NODE_POLL_S = 1.0
TRAIN, FINAL = "train", "evaluate"


class NodesLostError(RuntimeError):
    """Fewer than ``min-nodes`` participants are connected or replying."""


@dataclass
class Aggregated:
    """A round's new global model, waiting for its evaluation (the next exchange's replies)."""

    server_round: int
    state: State
    train_stats: dict[int, dict[str, Any]]
    extra: dict[str, Any] = field(default_factory=dict)
    step: State | None = None  # state minus the model it was aggregated from (on the grid)


class BoundedFedAvg:
    """FedAvg whose rounds are single exchanges, with bounded, tracked node sampling.

    Args:
        cfg: The run config.
        store: Where rounds are recorded (``None``: only the log line).
    """

    def __init__(self, cfg: RunConfig, store: RoundStore | None) -> None:
        self.cfg = cfg
        self.store = store
        self.dropped: set[int] = set()
        self.sent: dict[str, list[int]] = {}
        self.sent_at: dict[str, float] = {}
        self.dropped_at: dict[int, float] = {}
        self.phase_args: dict[str, tuple[State, int, str]] = {}
        self.phase_started = 0.0
        self.phase_s: dict[str, float] = {}
        self.grid: Grid | None = None
        self.names: dict[int, str] = {}
        self.replied: dict[str, list[int]] = {}
        self.missed: dict[str, list[int]] = {}
        self.rounds: list[RoundRecord] = []
        self.initial_metrics: dict[str, float] = {}
        # Per committed round: (effective noise multiplier, sample rate), for the accountant.
        self.dp_steps: list[tuple[float, float]] = []
        self.max_weight = 1.0 if cfg.dp_placement != "off" else DEFAULT_MAX_WEIGHT
        self.secure_info: dict[str, Any] = {}
        self.next_secure: SecureRound | None = None  # keys shared on the last round's messages
        self.copies = Copies(cfg.wire_dtype)

    # -- the run ----------------------------------------------------------------------------

    def run(self, grid: Grid, initial: State, first_round: int = 1) -> State:
        """Run rounds ``first_round``..``num-server-rounds`` and the final evaluation.

        ``initial`` is round ``first_round - 1``'s model (a resumed run's last committed one;
        its replies' evaluations, already recorded, only go to the log). Returns the last
        model; with every round already committed it returns ``initial`` at once.

        Raises:
            NodesLostError: A phase had fewer than ``min-nodes`` valid replies.
        """
        self.grid = grid
        # A fresh run starts on float16's grid (one start for both wire dtypes, sent exactly).
        state = on_grid(initial, "float16") if first_round == 1 else initial
        self.copies.send(state, exact=first_round == 1)
        waiting: Aggregated | None = None
        if first_round > self.cfg.rounds:
            log(INFO, "all %d rounds are committed already", self.cfg.rounds)
            return state
        for server_round in range(first_round, self.cfg.rounds + 1):
            started = time.monotonic()
            if self.cfg.secure_aggregation:
                replies, mean = self._secure_phase(grid, server_round, state)
            else:
                replies, mean = self._phase(grid, TRAIN, server_round, state,
                                            MessageType.TRAIN), None
            evaluated = self._evaluations(replies)
            if waiting is None:
                self.initial_metrics = _global_metrics(evaluated)
                log(INFO, "round %d: the model it started from scored %s", server_round,
                    self.initial_metrics)
            else:
                self._commit(waiting, evaluated, self._who(self.replied[TRAIN]))
            waiting = self._aggregate(server_round, state, replies, mean)
            waiting.extra["round_wall_s"] = time.monotonic() - started
            state = waiting.state
            self.copies.send(state, waiting.step)
        assert waiting is not None  # rounds >= 1 (RunConfig.validate)
        started = time.monotonic()
        replies = self._phase(grid, FINAL, self.cfg.rounds, state, MessageType.EVALUATE)
        waiting.extra["final_evaluate_s"] = time.monotonic() - started
        waiting.extra["final_client_process_s"] = max(
            (_num(m.content.metric_records["metrics"].get("process-s", -1.0)) for m in replies),
            default=0.0)
        self._commit(waiting, self._evaluations(replies), self._who(self.replied[FINAL]))
        return state

    def _phase(self, grid: Grid, phase: str, server_round: int, state: State,
               message_type: str) -> list[Message]:
        nodes = self.select_nodes(grid, phase, server_round)
        self.phase_args[phase] = (state, server_round, message_type)
        replies = exchange(grid, self._messages(server_round, state, nodes, message_type),
                           self.cfg.phase_timeout_s)
        return self._account(phase, server_round, replies)

    def _messages(self, server_round: int, state: State, node_ids: list[int],
                  message_type: str, sampled: int | None = None) -> list[Message]:
        self.copies.send(state)  # the model being sent already: nothing changes
        return [Message(content=self._content(server_round, node, sampled or len(node_ids)),
                        message_type=message_type, dst_node_id=node) for node in node_ids]

    def _content(self, server_round: int, node: int, sampled: int) -> RecordDict:
        return self.copies.content(node, {"server-round": server_round, DP_SAMPLED: sampled})

    def _secure_phase(self, grid: Grid, server_round: int,
                      state: State) -> tuple[list[Message], list[np.ndarray]]:
        """One SecAgg+ round: the clear replies (metrics) and the mean of the masked updates.

        A round that lost too many participants before its sum was unmasked runs again (after
        waiting for them to rejoin, then with whoever is connected). A round is never run again
        after its sum was unmasked: two sums over different sets would reveal an update.

        Raises:
            NodesLostError: Still too few participants after :data:`SECURE_ATTEMPTS`.
            RuntimeError: A reply's weight exceeds the bound its setup stated.
        """
        self.copies.send(state)  # what the collect stage carries (already: nothing changes)
        for attempt in range(1, SECURE_ATTEMPTS + 1):
            nodes = self.select_nodes(grid, TRAIN, server_round)
            params = choose_params(len(nodes), self.max_weight, self._clipping_range(len(nodes)))
            prepared, self.next_secure = self.next_secure, None
            round_ = fitting(prepared, str(server_round), nodes, params, online_nodes(grid)
                             ) or self._secure_round(grid, server_round, nodes, params)
            plan_next = None
            if server_round < self.cfg.rounds and self.cfg.fraction_train >= 1.0:
                def plan_next(ahead: list[int], bound: float) -> SecureRound:
                    p = choose_params(len(ahead), bound, self._clipping_range(len(ahead)))
                    return self._secure_round(grid, server_round + 1, ahead, p)
            try:
                result = round_.run(partial(self._content, server_round, sampled=len(nodes)),
                                    plan_next)
                break
            except SecureRoundError as exc:
                self._mark_lost(round_.lost)
                if attempt == SECURE_ATTEMPTS:
                    raise NodesLostError(str(exc)) from None
                log(WARNING, "%s; running the round again (waiting up to %g s for lost nodes "
                    "to rejoin)", exc, self.cfg.node_wait_s)
                lost = sorted(round_.lost)
                self._rejoined(TRAIN, server_round, lost, len(lost))
        self.next_secure = result.next_round
        weights = [self._weight(m) for m in result.replies]
        if max(weights) > result.params.max_weight:
            raise RuntimeError(f"round {server_round}: a participant's update was weighted by "
                               f"{max(weights):g} examples, above the {result.params.max_weight:g}"
                               " its setup reply stated; the aggregate is not a weighted mean")
        self.max_weight = result.params.max_weight  # the fitted bound holds for the next rounds
        clipped = sum(_num(m.content.metric_records["metrics"].get("secure-clipped", 0))
                      for m in result.replies)
        if clipped:
            log(WARNING, "round %d: %d weighted update element(s) exceeded the secure clipping "
                "range %g and were clipped", server_round, clipped, params.clipping_range)
        self.secure_info = {**result.params.as_record(), "secagg_clipped_elements": int(clipped),
                            "secagg_stage_s": result.stage_s,
                            "secagg_keys": "ahead" if result.keys_ahead else "own stages",
                            "secure_exchanges": len(result.stage_s),
                            "secagg_lost": {str(n): s for n, s in sorted(result.lost.items())}}
        replies = self._account(TRAIN, server_round, result.replies, top_up=False)
        self._mark_lost(result.lost)  # lost after its masked vector: in the sum, not sampled next
        return replies, result.mean

    def _secure_round(self, grid: Grid, server_round: int, nodes: list[int],
                      params: SecureParams) -> SecureRound:
        return SecureRound(grid, nodes, params, self.cfg.phase_timeout_s, str(server_round),
                           self.cfg.min_nodes, fit_weight=self.cfg.dp_placement == "off")

    def _rejoined(self, phase: str, server_round: int, missing: list[int],
                  need: int) -> list[int]:
        """Wait at most ``node-wait-s`` for ``need`` of ``missing`` to rejoin; return who did.

        Rejoined: activated again (a new session) since the phase was sent.
        """
        sent_at = self.sent_at.get(phase, 0.0)
        deadline = time.monotonic() + self.cfg.node_wait_s
        while True:
            activated = online_nodes(self.grid) if self.grid is not None else {}
            back = [n for n in missing if (activated.get(n) or 0.0) > sent_at]
            if len(back) >= need or time.monotonic() >= deadline:
                return back
            log(INFO, "%s round %s: waiting for lost node(s) %s to rejoin (up to %.0f s)",
                phase, server_round, [n for n in missing if n not in back],
                deadline - time.monotonic())
            time.sleep(NODE_POLL_S)

    def _clipping_range(self, sampled: int) -> float:
        """The secure clipping range: 8, or 6 x (clipped norm + client noise std) with DP."""
        if self.cfg.dp_placement == "off":
            return DEFAULT_CLIPPING_RANGE
        noise = privacy.client_noise_std(self.cfg.dp_noise_multiplier,
                                         self.cfg.dp_clipping_norm, sampled)
        return max(DEFAULT_CLIPPING_RANGE, 6.0 * (self.cfg.dp_clipping_norm + noise))

    def _mark_lost(self, lost: Mapping[int, str]) -> None:
        for node in lost:
            self.dropped.add(node)
            self.dropped_at[node] = self.sent_at.get(TRAIN, 0.0)

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
        fraction = self.cfg.fraction_train if phase == TRAIN else 1.0
        least = max(need, 2 if self.cfg.secure_aggregation and phase == TRAIN else 1)
        size = min(len(usable), max(int(len(usable) * fraction), least))
        chosen = sorted(random.Random(self.cfg.seed * 1000 + server_round).sample(usable, size))
        self.sent[phase] = chosen
        self.sent_at[phase] = time.time()
        self.phase_started = time.monotonic()
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
                self.copies.held.pop(node, None)  # back with a new SuperNode: no copy
                log(INFO, "node %s (%s) rejoined; sampling it again", node,
                    self.names.get(node, "?"))

    def _top_up(self, phase: str, server_round: int, valid: list[Message],
                missing: list[int]) -> list[Message]:
        """Re-send the phase to lost nodes that rejoined (at most ``node-wait-s`` for them).

        Only when fewer than ``min-nodes`` replies are valid; returns the new valid replies.
        """
        if self.grid is None or phase not in self.phase_args:
            return []
        need = min(len(missing), self.cfg.min_nodes - len(valid))
        back = self._rejoined(phase, server_round, missing, need)
        if not back:
            return []
        state, sent_round, message_type = self.phase_args[phase]
        log(INFO, "%s round %s: re-sending to rejoined node(s) %s", phase, server_round, back)
        self.copies.answered((), missed=back)  # back with a new SuperNode: the whole model
        replies = exchange(self.grid, self._messages(sent_round, state, back, message_type,
                                                     len(self.sent.get(phase, back))),
                           self.cfg.phase_timeout_s)
        return [m for m in replies if not m.has_error() and int(m.metadata.src_node_id) in back]

    def _account(self, phase: str, server_round: int, replies: list[Message],
                 top_up: bool = True) -> list[Message]:
        """Keep valid replies, top up from rejoined nodes, mark silent ones, enforce the minimum.

        A secure round is never topped up: a plain message would carry an update in clear.
        """
        valid = [m for m in replies if not m.has_error()]
        # Error replies of a dead node carry the SuperLink's id: count by whom we sent to.
        answered = {int(m.metadata.src_node_id) for m in valid}
        missing = [n for n in self.sent.get(phase, []) if n not in answered]
        if top_up and missing and len(valid) < self.cfg.min_nodes:
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
        self.copies.answered(answered, missing)
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
        return sorted(valid, key=lambda m: int(m.metadata.src_node_id))

    def _who(self, nodes: Iterable[int]) -> list[str]:
        return sorted(self.names.get(n, f"node {n}") for n in nodes)

    # -- aggregation and records ------------------------------------------------------------

    def _aggregate(self, server_round: int, sent: State, replies: list[Message],
                   mean: list[np.ndarray] | None = None) -> Aggregated:
        """FedAvg the updates (float32, weighted by training examples); keep the train figures.

        ``mean``: a secure round's mean update (the replies then hold metrics only). With
        differential privacy the mean is uniform over the clipped updates and, placed on the
        server, noised here.
        """
        states: list[State] = []
        weights: list[float] = []
        stats: dict[int, dict[str, Any]] = {}
        for msg in replies:
            metrics = msg.content.metric_records["metrics"]
            examples = int(_num(metrics["num-examples"]))
            stats[int(msg.metadata.src_node_id)] = {
                "train_loss": _num(metrics["train-loss"]),
                "train_time_s": _num(metrics["train-time-s"]),
                "eval_time_s": _num(metrics["eval-time-s"]),
                "delay_s": _num(metrics["delay-s"]),
                "process_s": _num(metrics.get("process-s", -1.0)),
                "train_examples": examples,
            }
            if mean is None:
                states.append(from_record(msg.content.array_records["arrays"]))
            weights.append(self._weight(msg))
        if mean is not None:
            delta = dict(zip(sent, mean, strict=True))
        elif sum(weights) > 0:  # each reply holds its update (trained - received)
            delta = weighted_mean(states, weights)
        else:
            delta = {k: np.zeros_like(v) for k, v in sent.items()}
        # The step on the wire's grid: held + step on every node is this model, bitwise.
        step = on_grid(self._noised(delta, len(replies)), self.cfg.wire_dtype)
        state = add_step(sent, step)
        values = list(stats.values())
        extra = {
            "train_nodes": len(values),
            "max_client_train_s": max((s["train_time_s"] for s in values), default=0.0),
            "max_client_delay_s": max((s["delay_s"] for s in values), default=0.0),
            # The slowest ClientApp process, start-up to reply (imports, data, eval, train).
            "max_client_process_s": max((s["process_s"] for s in values), default=0.0),
            "dropped_nodes": sorted(self.dropped),
            "train_phase_s": self.phase_s.get(TRAIN, 0.0),
            "phases": 1 if mean is None else int(self.secure_info["secure_exchanges"]),
            # Who contributed: the participants whose updates were aggregated.
            CONTRIBUTORS: self._who(self.replied.get(TRAIN, [])),
            MISSING: self._who(self.missed.get(TRAIN, [])),
            "protection": self.cfg.protection,
            **(self.secure_info if mean is not None else {}),
            **self._privacy_figures(len(self.sent.get(TRAIN, [])), len(replies)),
        }
        return Aggregated(server_round, state, stats, extra, step)

    def _weight(self, msg: Message) -> float:
        """A reply's FedAvg weight: its training examples (1 each with DP: a uniform mean)."""
        if self.cfg.dp_placement != "off":
            return 1.0
        return _num(msg.content.metric_records["metrics"]["num-examples"])

    def _noised(self, delta: State, contributed: int) -> State:
        """The mean update with the server's differential-privacy noise (std z*C/contributed)."""
        if self.cfg.dp_placement != "server":
            return delta
        std = privacy.server_noise_std(self.cfg.dp_noise_multiplier,
                                       self.cfg.dp_clipping_norm) / max(contributed, 1)
        return privacy.add_noise(delta, std, np.random.default_rng())

    def _privacy_figures(self, sampled: int, contributed: int) -> dict[str, Any]:
        """This round's (epsilon, delta) after composing every committed round so far."""
        if self.cfg.dp_placement == "off":
            return {}
        z = privacy.effective_noise_multiplier(self.cfg.dp_placement,
                                               self.cfg.dp_noise_multiplier, sampled,
                                               contributed)
        # No amplification by sampling is claimed: the sample is seeded from the public run
        # config and who took part is recorded, so it is neither random nor secret.
        rate = 1.0
        self.dp_steps.append((z, rate))
        return {"dp_epsilon": privacy.epsilon(self.dp_steps, self.cfg.dp_delta),
                "dp_delta": self.cfg.dp_delta, "dp_noise_multiplier_effective": z,
                "dp_sample_rate": rate, "dp_clipping_norm": self.cfg.dp_clipping_norm,
                "dp_placement": self.cfg.dp_placement}

    def _evaluations(self, replies: list[Message]) -> list[dict[str, Any]]:
        """Each reply's evaluation of the model it received (sorted by node)."""
        k = self.cfg.num_classes
        out = []
        for msg in replies:
            metrics = msg.content.metric_records["metrics"]
            out.append({
                "node_id": int(msg.metadata.src_node_id),
                "participant": str(msg.content.config_records["client"]["participant"]),
                "num_examples": int(_num(metrics["eval-examples"])),
                "loss": _num(metrics["eval-loss"]),
                "confusion": np.asarray(metrics["confusion"], dtype=np.int64).reshape(k, k),
            })
        return out

    def _commit(self, done: Aggregated, evaluated: list[dict[str, Any]],
                evaluated_by: list[str]) -> None:
        """Record round ``done.server_round`` with its own model's metrics; print its line."""
        agg = task.aggregate_evaluations(
            (e["num_examples"], e["loss"], e["confusion"]) for e in evaluated)
        per_client = []
        for e in evaluated:
            per_client.append({
                "participant": e["participant"], "node_id": e["node_id"],
                "num_examples": e["num_examples"], "loss": e["loss"],
                **task.metrics_from_confusion(e["confusion"]),
                **done.train_stats.get(e["node_id"], {})})
        record = RoundRecord(
            server_round=done.server_round,
            metrics={name: float(agg[name]) for name in METRICS},
            per_client=tuple(per_client),
            confusion=tuple(tuple(int(v) for v in row) for row in agg["confusion"]),
            extra={**done.extra, "evaluated_by": evaluated_by},
        )
        if self.store is not None:
            self.store.log_round(record, done.state)
        self.rounds.append(record)
        line = {"round": record.server_round, "metrics": dict(record.metrics),
                "per_client": list(record.per_client), "confusion": record.confusion,
                **record.extra}
        log(INFO, "%s %s", ROUND_MARK, json.dumps(line, sort_keys=True))


def _global_metrics(evaluated: list[dict[str, Any]]) -> dict[str, float]:
    agg = task.aggregate_evaluations(
        (e["num_examples"], e["loss"], e["confusion"]) for e in evaluated)
    return {name: float(agg[name]) for name in METRICS}


def _num(value: object) -> float:
    """Return a scalar record value as float (records are typed as unions of lists too)."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise TypeError(f"expected a number in the reply, got {value!r}")
    return float(value)
