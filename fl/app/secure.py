"""Secure aggregation of one round (SecAgg+): the ServerApp learns only the sum of the updates.

The server side of Flower's SecAgg+ protocol: the four stages of ``SecAggPlusWorkflow`` (setup,
share keys, collect masked vectors, unmask) with flwr's own crypto and quantisation functions,
driven on the Grid's push/pull with the strategy's short poll and bounded waits; the next
round's setup and share keys ride on this round's collect and unmask messages. Participants
answer with flwr's ``secaggplus_mod`` (wrapped in ``fl/app/client_app.py``). A participant lost
after its masked vector is in still counts while ``threshold`` of its neighbours answer the
unmask stage; fewer raise :class:`SecureRoundError`. Parameters: :func:`choose_params`. See
fl/README.md, "Secure aggregation".
"""

from __future__ import annotations

import math
import random
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from logging import INFO, WARNING
from typing import Any, cast

import numpy as np
from flwr.app import ConfigRecord, Message, MessageType, RecordDict
from flwr.common import bytes_to_ndarray, log
from flwr.common.secure_aggregation.crypto.shamir import combine_shares
from flwr.common.secure_aggregation.crypto.symmetric_encryption import generate_shared_key
from flwr.common.secure_aggregation.ndarrays_arithmetic import (
    factor_extract,
    parameters_addition,
    parameters_mod,
    parameters_subtraction,
)
from flwr.common.secure_aggregation.quantization import dequantize
from flwr.common.secure_aggregation.secaggplus_constants import RECORD_KEY_CONFIGS, Key, Stage
from flwr.common.secure_aggregation.secaggplus_utils import pseudo_rand_gen
from flwr.serverapp import Grid
from flwr.supercore.primitives.asymmetric import bytes_to_private_key, bytes_to_public_key

from fl.app.exchange import exchange
from fl.app.protocol import AHEAD_RECORD, BOUND_KEY, COUNT_KEY, COUNT_RECORD

MODULUS_RANGE = 2**32  # masks and masked vectors live in [0, 2**32): 4 bytes per element
DEFAULT_CLIPPING_RANGE = 8.0  # |weight x update element| beyond this is clipped (and counted)
# The first round's weight bound (training examples of one participant) before the counts are
# known; later rounds use the largest count seen (tighter quantisation).
DEFAULT_MAX_WEIGHT = 10_000.0

Exchange = Callable[[Grid, list[Message], float], list[Message]]


class SecureRoundError(RuntimeError):
    """Too few participants are left to finish the secure round (below the threshold)."""


class BoundNotTaken(RuntimeError):
    """A participant's ClientApp did not take the weight bound (another app version)."""


@dataclass(frozen=True)
class SecureParams:
    """The SecAgg+ parameters of one round (chosen by :func:`choose_params`).

    Attributes:
        sampled: Participants in the round.
        shares: Shares each participant splits its secrets into (itself and its neighbours).
        threshold: Shares needed to rebuild a secret: up to ``shares - threshold`` of a
            participant's neighbours may drop out; fewer than ``threshold`` colluding with the
            aggregator learn nothing of its update.
        clipping_range: Bound on each weighted update element before quantisation.
        quantization_range: Integer levels over ``[-clipping_range, clipping_range]``.
        modulus_range: Range of the masks (and of every masked element).
        max_weight: Bound on one participant's weight (its training examples).
    """

    sampled: int
    shares: int
    threshold: int
    clipping_range: float
    quantization_range: int
    modulus_range: int
    max_weight: float

    def setup_record(self) -> dict[str, int | float | str]:
        """The setup stage's ConfigRecord values (flwr's ``Key`` names)."""
        return {Key.STAGE: Stage.SETUP, Key.SAMPLE_NUMBER: self.sampled,
                Key.SHARE_NUMBER: self.shares, Key.THRESHOLD: self.threshold,
                Key.CLIPPING_RANGE: float(self.clipping_range),
                Key.TARGET_RANGE: self.quantization_range, Key.MOD_RANGE: self.modulus_range,
                Key.MAX_WEIGHT: float(self.max_weight)}

    def as_record(self) -> dict[str, float | int]:
        """The parameters as recorded with the round."""
        return {"secagg_shares": self.shares, "secagg_threshold": self.threshold,
                "secagg_clipping_range": self.clipping_range,
                "secagg_quantization_range": self.quantization_range,
                "secagg_max_weight": self.max_weight}


def choose_params(sampled: int, max_weight: float = DEFAULT_MAX_WEIGHT,
                  clipping_range: float = DEFAULT_CLIPPING_RANGE) -> SecureParams:
    """SecAgg+ parameters for ``sampled`` participants.

    Up to 7 participants every one shares with all (SecAgg); above, with an odd neighbourhood
    of about ``2 log2(n) + 1`` (SecAgg+, Bell et al. 2020), which keeps each participant's work
    logarithmic. The threshold is a strict majority of the shares (at least 2): privacy holds
    against the aggregator colluding with fewer than that many neighbours, and each participant
    survives ``shares - threshold`` lost neighbours. Quantisation uses the most levels for
    which ``sampled`` summed values stay below the modulus with a factor 2 of headroom.

    Raises:
        ValueError: Fewer than 2 participants (a sum of one is that participant's update).
    """
    if sampled < 2:
        raise ValueError("secure aggregation needs at least 2 participants in a round")
    if sampled <= 7:
        shares = sampled
    else:
        shares = min(sampled, 2 * math.ceil(math.log2(sampled)) + 1)
        shares += 0 if shares == sampled or shares % 2 else 1
    threshold = max(2, shares // 2 + 1)
    levels = 2 ** (math.floor(math.log2(MODULUS_RANGE / (2 * sampled))))
    return SecureParams(sampled=sampled, shares=shares, threshold=threshold,
                        clipping_range=float(clipping_range), quantization_range=levels,
                        modulus_range=MODULUS_RANGE, max_weight=float(max_weight))


@dataclass
class SecureResult:
    """What the ServerApp learnt from one secure round.

    Attributes:
        replies: The collect stage's valid replies: clear metrics only (their arrays are empty).
        mean: The weighted mean of the masked vectors' plain values, one array per element
            of the update (the only model data the aggregator ever sees).
        params: The round's parameters.
        contributed: Nodes whose masked vectors are in the sum.
        lost: Node -> the stage at which it was lost.
        stage_s: Seconds per stage this round ran on its own (its critical path).
        keys_ahead: Its setup and share-keys stages rode on the previous round's messages.
        next_round: The next round, keys shared on this round's messages (``None``: it sets
            up on its own).
    """

    replies: list[Message]
    mean: list[np.ndarray]
    params: SecureParams
    contributed: list[int]
    lost: dict[int, str] = field(default_factory=dict)
    stage_s: dict[str, float] = field(default_factory=dict)
    keys_ahead: bool = False
    next_round: SecureRound | None = None


# The next round for the nodes this round collects from, and the weight bound it starts with.
PlanNext = Callable[[list[int], float], "SecureRound"]


class SecureRound:
    """One SecAgg+ round over ``nodes`` (every stage bounded by ``timeout_s``).

    Its setup and share-keys stages either run on their own or ride, for the same nodes, on
    the previous round's collect and unmask messages (:data:`AHEAD_RECORD`), each node keeping
    the two rounds' states apart (``fl/app/client_app.py``).

    Args:
        grid: The Grid.
        nodes: The sampled node ids.
        params: From :func:`choose_params` for ``len(nodes)``.
        timeout_s: Longest wait for one stage's replies.
        group_id: The round number (Flower's message group).
        min_nodes: Fewest contributors the round may have.
        fit_weight: Fit the weight bound to the training counts of the setup replies (off
            with differential privacy: every weight is 1).
        send: The exchange function (``fl.app.exchange.exchange``).
    """

    def __init__(self, grid: Grid, nodes: Sequence[int], params: SecureParams,
                 timeout_s: float, group_id: str, min_nodes: int = 2,
                 fit_weight: bool = True, send: Exchange = exchange) -> None:
        self.grid, self.params, self.timeout_s = grid, params, timeout_s
        self.group_id, self.send, self.min_nodes = group_id, send, min_nodes
        self.fit_weight = fit_weight
        self.sampled = sorted(nodes)
        self.active = set(self.sampled)
        self.lost: dict[int, str] = {}
        self.stage_s: dict[str, float] = {}
        order = list(self.sampled)
        random.SystemRandom().shuffle(order)  # neighbourhoods the participants cannot pick
        half = params.shares >> 1
        self.neighbours = {nid: {order[(i + k) % len(order)] for k in range(-half, half + 1)}
                           for i, nid in enumerate(order)}
        self.public_keys: dict[int, tuple[bytes, bytes]] = {}
        self.keyed: set[int] = set()
        self.fwd: dict[int, tuple[list[int], list[bytes]]] = {}
        self.active_after_collect: set[int] = set()
        self.keys_ahead = False
        self.keyed_at = 0.0

    @property
    def ready(self) -> bool:
        """Its keys are shared: the collect stage can go."""
        return bool(self.keyed)

    def run(self, collect: Callable[[int], RecordDict],
            plan_next: PlanNext | None = None) -> SecureResult:
        """Run the stages; ``collect(node)`` is the round's content (global model, config).

        ``plan_next``: the next round, whose setup and share-keys stages then ride on this
        round's collect and unmask messages; a next round that falls below its threshold on
        the way is dropped (it sets up on its own), never this one.

        Raises:
            SecureRoundError: Fewer than the threshold of some participant's neighbours are
                left after a stage.
        """
        if not self.ready:
            setup = self._stage(Stage.SETUP, self._setup_contents())
            self._take_setup(_records(setup), {int(m.metadata.src_node_id): _count(m)
                                               for m in setup})
            self._take_share_keys(_records(self._stage(Stage.SHARE_KEYS,
                                                       self._share_keys_contents())))
        ahead = None if plan_next is None else plan_next(sorted(self.active),
                                                         self.params.max_weight)
        replies, summed, ahead = self._collect(collect, ahead)
        mean, ahead = self._unmask(summed, ahead)
        return SecureResult(replies=replies, mean=mean, params=self.params,
                            contributed=sorted(self.active_after_collect),
                            lost=dict(self.lost), stage_s=dict(self.stage_s),
                            keys_ahead=self.keys_ahead,
                            next_round=ahead if ahead is not None and ahead.ready else None)

    # -- stages -----------------------------------------------------------------------------

    def _stage(self, stage: str, contents: dict[int, RecordDict],
               rides: Mapping[int, RecordDict] | None = None) -> list[Message]:
        """Send ``stage``, the next round's stage riding on it (``rides``); the valid replies."""
        for nid, ride in (rides or {}).items():
            if nid in contents:
                contents[nid].config_records[AHEAD_RECORD] = ride.config_records[
                    RECORD_KEY_CONFIGS]
        started = time.monotonic()
        msgs = [Message(content=content, dst_node_id=nid, message_type=MessageType.TRAIN,
                        group_id=self.group_id) for nid, content in contents.items()]
        replies = self.send(self.grid, msgs, self.timeout_s)
        self.stage_s[stage] = self.stage_s.get(stage, 0.0) + time.monotonic() - started
        valid = [m for m in replies if not m.has_error()
                 and int(m.metadata.src_node_id) in contents
                 and RECORD_KEY_CONFIGS in m.content.config_records]
        self._answered(stage, set(contents), {int(m.metadata.src_node_id) for m in valid},
                       f" in {self.stage_s[stage]:.1f} s")
        return valid

    def _answered(self, stage: str, asked: set[int], answered: set[int], note: str) -> None:
        log(INFO, "secure round %s %s: %d of %d participant(s) answered%s", self.group_id,
            stage, len(answered), len(asked), note)
        for nid in asked - answered:
            self.lost.setdefault(nid, stage)
        self.active &= answered

    def _check(self, stage: str, need: set[int]) -> None:
        """Each node in ``need`` must keep ``threshold`` active neighbours (to be rebuilt).

        Before the unmask stage the active nodes are the round's contributors: fewer than
        ``min_nodes`` of them end the round too.
        """
        if stage != Stage.UNMASK and len(self.active) < self.min_nodes:
            raise SecureRoundError(
                f"secure round {self.group_id} {stage}: {len(self.active)} of "
                f"{len(self.sampled)} participants left; at least {self.min_nodes} needed")
        for nid in sorted(need):
            left = len(self.neighbours[nid] & self.active)
            if left < self.params.threshold:
                raise SecureRoundError(
                    f"secure round {self.group_id} {stage}: {len(self.active)} of "
                    f"{len(self.sampled)} participants left; node {nid} has {left} active "
                    f"neighbour(s), the threshold is {self.params.threshold}")

    def _setup_contents(self) -> dict[int, RecordDict]:
        setup = ConfigRecord(cast(Any, self.params.setup_record()))
        return {nid: RecordDict({RECORD_KEY_CONFIGS: setup}) for nid in sorted(self.active)}

    def _take_setup(self, answers: Mapping[int, ConfigRecord],
                    counts: Mapping[int, int]) -> None:
        """Keep the public keys; fit the weight bound to the training counts.

        With ``fit_weight`` the bound becomes the largest of the nodes' ``counts`` when that
        is above the bound (the sum would overflow) or below half of it (coarser quantisation
        than needed). The share-keys stage hands every node the bound before any update is
        masked, so nothing is set up twice.
        """
        largest = max((counts.get(nid, 0) for nid in answers), default=0)
        bound = self.params.max_weight
        if self.fit_weight and largest > 0 and (largest > bound or largest < bound / 2):
            self.params = replace(self.params, max_weight=float(largest))
            log(INFO, "secure round %s: weight bound %g -> %d training examples",
                self.group_id, bound, largest)
        for nid, keys in answers.items():
            self.public_keys[nid] = (cast(bytes, keys[Key.PUBLIC_KEY_1]),
                                     cast(bytes, keys[Key.PUBLIC_KEY_2]))
        self._check(Stage.SETUP, self.active)

    def _share_keys_contents(self) -> dict[int, RecordDict]:
        self.keyed_at = time.time()  # a node (re)activated after this lost its keys
        contents = {}
        for nid in sorted(self.active):
            known = self.neighbours[nid] & self.active
            values: dict[str, list[bytes] | str | float] = {
                str(n): list(self.public_keys[n]) for n in sorted(known)}
            values[Key.STAGE] = Stage.SHARE_KEYS
            values[BOUND_KEY] = float(self.params.max_weight)
            contents[nid] = RecordDict({RECORD_KEY_CONFIGS: ConfigRecord(cast(Any, values))})
        return contents

    def _take_share_keys(self, answers: Mapping[int, ConfigRecord]) -> None:
        """Route the encrypted shares to their destinations; every node took the bound.

        Raises:
            BoundNotTaken: A node's ClientApp did not take the weight bound.
        """
        self.fwd = {n: ([], []) for n in self.active}
        for src, res in answers.items():
            if res.get(BOUND_KEY) != float(self.params.max_weight):
                raise BoundNotTaken(
                    f"secure round {self.group_id}: node {src} did not take the weight bound "
                    f"{self.params.max_weight:g}; run the same fedcloud app on every "
                    "participant")
            for dst, text in zip(_ints(res[Key.DESTINATION_LIST]),
                                 _blobs(res[Key.CIPHERTEXT_LIST]), strict=True):
                if dst in self.fwd:
                    self.fwd[dst][0].append(src)
                    self.fwd[dst][1].append(text)
        self.keyed = set(self.active)  # in each other's masks from here on
        self._check(Stage.SHARE_KEYS, self.active)

    def _collect(self, collect: Callable[[int], RecordDict], ahead: SecureRound | None,
                 ) -> tuple[list[Message], list[np.ndarray], SecureRound | None]:
        contents = {}
        for nid in sorted(self.active):
            srcs, texts = self.fwd[nid]
            base = collect(nid)
            content = RecordDict({**base.array_records, **base.config_records,
                                  **base.metric_records})
            content.config_records[RECORD_KEY_CONFIGS] = ConfigRecord({
                Key.STAGE: Stage.COLLECT_MASKED_VECTORS, Key.CIPHERTEXT_LIST: texts,
                Key.SOURCE_LIST: srcs})
            contents[nid] = content
        rides = {} if ahead is None else ahead._setup_contents()
        replies = self._stage(Stage.COLLECT_MASKED_VECTORS, contents, rides)
        counts = {int(m.metadata.src_node_id): int(_number(
            m.content.metric_records["metrics"].get("num-examples", 0))) for m in replies}
        ahead = _feed(ahead, Stage.SETUP, set(rides), replies,
                      lambda a, answers: a._take_setup(answers, counts))
        summed: list[np.ndarray] | None = None
        for msg in replies:
            res = msg.content.config_records[RECORD_KEY_CONFIGS]
            vector = [bytes_to_ndarray(b).astype(np.int64)
                      for b in _blobs(res[Key.MASKED_PARAMETERS])]
            summed = vector if summed is None else parameters_addition(summed, vector)
        self.active_after_collect = set(self.active)
        self._check(Stage.COLLECT_MASKED_VECTORS, self.keyed)
        assert summed is not None  # _check passed: at least `threshold` >= 2 replies
        return replies, parameters_mod(summed, self.params.modulus_range), ahead

    def _unmask(self, summed: list[np.ndarray], ahead: SecureRound | None,
                ) -> tuple[list[np.ndarray], SecureRound | None]:
        active, dead = self.active_after_collect, self.keyed - self.active_after_collect
        contents = {}
        for nid in sorted(active):
            near = self.neighbours[nid]
            contents[nid] = RecordDict({RECORD_KEY_CONFIGS: ConfigRecord({
                Key.STAGE: Stage.UNMASK, Key.ACTIVE_NODE_ID_LIST: sorted(near & active),
                Key.DEAD_NODE_ID_LIST: sorted(near & dead)})})
        rides = {} if ahead is None else ahead._share_keys_contents()
        replies = self._stage(Stage.UNMASK, contents, rides)
        ahead = _feed(ahead, Stage.SHARE_KEYS, set(rides), replies,
                      lambda a, answers: a._take_share_keys(answers))
        if ahead is not None:
            ahead.keys_ahead = True
        shares: dict[int, list[bytes]] = {n: [] for n in self.keyed}
        for msg in replies:
            res = msg.content.config_records[RECORD_KEY_CONFIGS]
            for owner, share in zip(_ints(res[Key.NODE_ID_LIST]), _blobs(res[Key.SHARE_LIST]),
                                    strict=True):
                if owner in shares:
                    shares[owner].append(share)
        return self._reconstruct(summed, shares, active), ahead

    def _reconstruct(self, summed: list[np.ndarray], shares: dict[int, list[bytes]],
                     active: set[int]) -> list[np.ndarray]:
        p = self.params
        shapes = [a.shape for a in summed]
        vector = summed
        for nid, share_list in shares.items():
            if len(share_list) < p.threshold:
                raise SecureRoundError(
                    f"secure round {self.group_id} unmask: {len(share_list)} share(s) of node "
                    f"{nid}'s secret came back, the threshold is {p.threshold}")
            secret = combine_shares(share_list)
            if nid in active:  # remove its private mask
                vector = parameters_subtraction(
                    vector, pseudo_rand_gen(secret, p.modulus_range, shapes))
                continue
            # Its pairwise masks, in the vectors of its neighbours that were summed.
            for other in sorted((self.neighbours[nid] & active) - {nid}):
                key = generate_shared_key(bytes_to_private_key(secret),
                                          bytes_to_public_key(self.public_keys[other][0]))
                mask = pseudo_rand_gen(key, p.modulus_range, shapes)
                vector = (parameters_addition(vector, mask) if nid > other
                          else parameters_subtraction(vector, mask))
        vector = parameters_mod(vector, p.modulus_range)
        total_weight, values = factor_extract(vector)
        plain = dequantize(values, p.clipping_range, p.quantization_range)
        offset = -(len(active) - 1) * p.clipping_range
        scale = p.quantization_range / total_weight
        return [((arr + offset) * scale).astype(np.float32) for arr in plain]


def fitting(prepared: SecureRound | None, group_id: str, nodes: Sequence[int],
            params: SecureParams, activated: Mapping[int, float | None]) -> SecureRound | None:
    """``prepared`` (keys shared on the previous round's messages) if round ``group_id`` can use it.

    It can when its keyed nodes are exactly the sampled ``nodes``, none has (re)activated
    since its keys were shared (``activated``: node -> epoch seconds, a restarted SuperNode
    lost them), and its clipping range is the one ``params`` need; otherwise the round sets
    up on its own (``None``). Who it lost on the way was lost in the previous round.
    """
    if prepared is None:
        return None
    restarted = [n for n in sorted(prepared.keyed)
                 if (activated.get(n) or 0.0) > prepared.keyed_at]
    if (prepared.group_id == group_id and prepared.keyed == set(nodes) and not restarted
            and prepared.params.clipping_range == params.clipping_range):
        prepared.lost = {}
        return prepared
    log(INFO, "secure round %s: the keys shared ahead were for node(s) %s (restarted since: "
        "%s), the round samples %s; setting up on its own", group_id, sorted(prepared.keyed),
        restarted, sorted(nodes))
    return None


def _records(replies: list[Message], key: str = RECORD_KEY_CONFIGS) -> dict[int, ConfigRecord]:
    """Sender -> the SecAgg+ stage record ``key`` of each reply that carries one."""
    return {int(m.metadata.src_node_id): m.content.config_records[key] for m in replies
            if key in m.content.config_records}


def _feed(ahead: SecureRound | None, stage: str, asked: set[int], replies: list[Message],
          take: Callable[[SecureRound, dict[int, ConfigRecord]], None]) -> SecureRound | None:
    """Hand the next round the answers to its ``stage`` that rode on ``replies``.

    Returns the next round, or ``None`` when it fell below its threshold (it then sets up on
    its own; this round is not affected).
    """
    if ahead is None:
        return None
    answers = {n: r for n, r in _records(replies, AHEAD_RECORD).items() if n in asked}
    ahead._answered(stage, asked, set(answers), ", on the previous round's messages")
    try:
        take(ahead, answers)
    except (SecureRoundError, BoundNotTaken) as exc:
        log(WARNING, "%s; round %s will set up its keys on its own", exc, ahead.group_id)
        return None
    return ahead


def _number(value: object) -> float:
    return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else 0.0


def _ints(value: object) -> list[int]:
    return [int(v) for v in cast(list[int], value)]


def _blobs(value: object) -> list[bytes]:
    return [bytes(v) for v in cast(list[bytes], value)]


def _count(msg: Message) -> int:
    """The training count a setup reply states (0 if it states none)."""
    record = msg.content.config_records.get(COUNT_RECORD)
    value = None if record is None else record.get(COUNT_KEY)
    return int(value) if isinstance(value, int) and not isinstance(value, bool) else 0
