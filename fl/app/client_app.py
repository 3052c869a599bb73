"""The Flower ClientApp: runs on each participant's SuperNode, on that participant's data only.

Thin: it reads the run config (``context.run_config``) and the node config (``data-dir``, set
by ``fl/orchestrator/supernode.py``; optional ``cache-dir``), and calls ``fl/app/task.py``.
One message a round (``fl/app/protocol.py``): the ``train`` handler evaluates the global model
it received on the local test split, trains it, and returns the update (trained - received, as
``wire-dtype``) with
both metric sets; ``evaluate`` serves the run's final evaluation. Each reply carries one
MetricRecord (``num-examples`` = training examples, the FedAvg weight) and a ConfigRecord
naming the participant. In a secure round (``fl/app/secure.py``) :func:`secure_mod` runs flwr's
``secaggplus_mod``: the update leaves only masked; the metrics stay in clear.
"""

from __future__ import annotations

import os
import random
import time
from logging import WARNING
from pathlib import Path
from typing import cast

import numpy as np
import torch
from flwr.app import ConfigRecord, Context, Message, MessageType, MetricRecord, RecordDict
from flwr.client.mod import secaggplus_mod
from flwr.clientapp import ClientApp
from flwr.clientapp.typing import ClientAppCallable
from flwr.common import Code, FitRes, Status, bytes_to_ndarray, log, ndarray_to_bytes
from flwr.common import ndarrays_to_parameters as to_parameters
from flwr.common.secure_aggregation.secaggplus_constants import (
    RECORD_KEY_CONFIGS,
    RECORD_KEY_STATE,
    Key,
    Stage,
)
from flwr.compat.common.recorddict_compat import fitres_to_recorddict
from torch import nn

from fl.app import task
from fl.app.cache import held_path, load_held, load_split_cached, save_held
from fl.app.data import Split
from fl.app.errors import AppError
from fl.app.privacy import add_noise, client_noise_std, clip_update
from fl.app.protocol import AHEAD_RECORD, BOUND_KEY, COUNT_KEY, COUNT_RECORD, DP_SAMPLED
from fl.app.runconfig import (
    NODE_CACHE_DIR,
    NODE_DATA_DIR,
    NODE_PARTICIPANT,
    NODE_TORCH_THREADS,
    RunConfig,
)
from fl.app.wire import BASE_KEY, MODEL_KEY, State, add_step, digest, from_record, to_record

# Where a node keeps the next round's SecAgg+ state while this round's is still in use, and
# this round's while the next round's stage runs in flwr's place.
AHEAD_STATE, THIS_STATE = "fedcloud-secagg-ahead", "fedcloud-secagg-this"


def secure_mod(msg: Message, context: Context, call_next: ClientAppCallable) -> Message:
    """Answer the SecAgg+ stages with flwr's ``secaggplus_mod``; pass any other message on.

    The setup reply also says how many training examples this participant has (they are in
    clear in every reply anyway), so the aggregator can set the weight bound before any update
    is masked; the share-keys stage hands over that bound (:data:`BOUND_KEY`). The masked
    vector's elements are below the modulus (2**32): they travel as uint32, half of flwr's
    int64. The next round's setup and share-keys stages may ride on a collect and an unmask
    message (:data:`AHEAD_RECORD`): they run on that round's own state, kept apart until this
    round's unmask is answered.
    """
    records = msg.content.config_records
    if msg.metadata.message_type != MessageType.TRAIN or RECORD_KEY_CONFIGS not in records:
        return call_next(msg, context)
    ahead = records.pop(AHEAD_RECORD, None)
    stage = records[RECORD_KEY_CONFIGS].get(Key.STAGE)
    if stage == Stage.SETUP:  # a round set up on its own: a prepared next round is stale
        context.state.config_records.pop(AHEAD_STATE, None)
    reply = _secure_stage(msg, context, call_next)
    answer = None if ahead is None else _ahead_stage(msg, context, ahead)
    if answer is not None:
        reply.content.config_records[AHEAD_RECORD] = answer
    if stage == Stage.UNMASK:  # this round is done: the next one's shared keys take over
        if answer is not None:
            _move(context, AHEAD_STATE, RECORD_KEY_STATE)
        context.state.config_records.pop(AHEAD_STATE, None)
    return reply


def _secure_stage(msg: Message, context: Context, call_next: ClientAppCallable) -> Message:
    configs = msg.content.config_records[RECORD_KEY_CONFIGS]
    setup = configs.get(Key.STAGE) == Stage.SETUP
    bound = configs.pop(BOUND_KEY, None)
    reply = secaggplus_mod(msg, context, call_next)
    res = reply.content.config_records[RECORD_KEY_CONFIGS]
    if setup:  # the weight bound must hold before any masked vector exists
        reply.content.config_records[COUNT_RECORD] = ConfigRecord(
            {COUNT_KEY: train_count(context)})
    if isinstance(bound, float):  # flwr's state keeps the bound the collect stage weighs with
        state = context.state.config_records[RECORD_KEY_STATE]
        if "max_weight" in state:
            state["max_weight"] = bound
            res[BOUND_KEY] = float(str(state["max_weight"]))
    if Key.MASKED_PARAMETERS in res:
        blobs = cast(list[bytes], res[Key.MASKED_PARAMETERS])
        res[Key.MASKED_PARAMETERS] = [
            ndarray_to_bytes(bytes_to_ndarray(b).astype(np.uint32)) for b in blobs]
    return reply


def _ahead_stage(msg: Message, context: Context, configs: ConfigRecord) -> ConfigRecord | None:
    """Run the next round's stage ``configs`` on its own state; ``None`` if it failed.

    It failing never costs this round its reply: the next round then sets up on its own.
    """
    _move(context, RECORD_KEY_STATE, THIS_STATE)  # this round's state, until its unmask
    if configs.get(Key.STAGE) == Stage.SETUP:
        context.state.config_records.pop(AHEAD_STATE, None)
    _move(context, AHEAD_STATE, RECORD_KEY_STATE)
    content = msg.content
    msg.content = RecordDict({RECORD_KEY_CONFIGS: configs})
    try:
        reply = _secure_stage(msg, context, _no_app)
        _move(context, RECORD_KEY_STATE, AHEAD_STATE)
        return reply.content.config_records[RECORD_KEY_CONFIGS]
    except (ValueError, KeyError, TypeError) as exc:
        log(WARNING, "the next round's secure %s stage failed (%s); it will set up on its own",
            configs.get(Key.STAGE), exc)
        return None
    finally:
        msg.content = content
        _move(context, THIS_STATE, RECORD_KEY_STATE)


def _move(context: Context, src: str, dst: str) -> None:
    """Move the node state's ConfigRecord ``src`` to ``dst`` (dropping ``dst``'s)."""
    # ``config_records`` is a view that does not see later changes: take a new one each time.
    context.state.config_records.pop(dst, None)
    if src in context.state.config_records:
        context.state.config_records[dst] = context.state.config_records.pop(src)


def _no_app(msg: Message, context: Context) -> Message:
    raise ValueError("a stage riding ahead never trains")


app = ClientApp(mods=[secure_mod])


def train_count(context: Context) -> int:
    """This participant's training examples (remembered in the node's run state)."""
    known = context.state.config_records.get(COUNT_RECORD)
    if known is not None and COUNT_KEY in known:
        return int(str(known[COUNT_KEY]))
    cfg = RunConfig.from_flower(context.run_config)
    count = int(_data(cfg, context, "train").y.shape[0])
    context.state.config_records[COUNT_RECORD] = ConfigRecord({COUNT_KEY: count})
    return count


def _setup(msg: Message, context: Context) -> tuple[RunConfig, nn.Module, State]:
    """The run config, the model built and loaded with the received global one, and that one."""
    cfg = RunConfig.from_flower(context.run_config)
    threads = int(str(context.node_config.get(NODE_TORCH_THREADS, 0)))
    if threads > 0:  # several SuperNodes sharing a host must not oversubscribe its cores
        torch.set_num_threads(threads)
    model = task.build_model(cfg.model_spec())
    state = received_model(msg, context)
    model.load_state_dict({k: torch.from_numpy(v) for k, v in state.items()})
    return cfg, model, state


def received_model(msg: Message, context: Context) -> State:
    """The global model a message carries: whole, or as the step from the one this node holds.

    A message naming its model's digest (a float16 run, ``fl.app.wire.Copies``) is kept on
    the node (``fl.app.cache.save_held``) for the next step.

    Raises:
        AppError: The step is from a model this node does not hold, or the result is not the
            model the ServerApp sent.
    """
    arrays = from_record(msg.content.array_records["arrays"])
    config = msg.content.config_records["config"]
    want, base = str(config.get(MODEL_KEY, "")), str(config.get(BASE_KEY, ""))
    if not want:
        return arrays
    cache = str(context.node_config.get(NODE_CACHE_DIR, "") or "")
    path = held_path(Path(cache) if cache else None, context.run_id, context.node_id)
    if base:
        found = load_held(path, (want, base))
        if found is not None and found[0] == want:  # the same message again (a round run again)
            return found[1]
        if found is None:
            raise AppError("this participant holds no copy of the model the ServerApp's step "
                           "starts from (its copy was removed during the run?).",
                           "nothing to do: the ServerApp sends it the whole model the next "
                           "time it samples it.")
        arrays = add_step(found[1], arrays)
    if digest(arrays) != want:
        raise AppError("the global model rebuilt on this participant differs from the "
                       "ServerApp's (its digest does not match).",
                       "run the same fedcloud app on the ServerApp and every participant.")
    try:
        save_held(path, arrays, want)
    except OSError as exc:
        raise AppError(f"this participant cannot keep its copy of the global model in "
                       f"{path.parent}: {exc}.", "make that directory writable (node config "
                       "cache-dir) or train with training.wireDtype float32.") from None
    return arrays


def _data(cfg: RunConfig, context: Context, split: str) -> Split:
    data_dir = Path(str(context.node_config[NODE_DATA_DIR]))
    cache = str(context.node_config.get(NODE_CACHE_DIR, "") or "")
    return load_split_cached(cfg.model, data_dir, split, cfg.image_size,
                             Path(cache) if cache else None)


def process_age_s() -> float:
    """Seconds since this ``flwr-clientapp`` process started (Linux ``/proc``; -1 elsewhere).

    Reported in every reply so a round's time outside training can be split into the process's
    own start-up (imports, FAB, data) and what happens around it (polls, transfers).
    """
    try:
        with open("/proc/self/stat", encoding="ascii") as stat:
            ticks = int(stat.read().rsplit(")", 1)[1].split()[19])
        with open("/proc/uptime", encoding="ascii") as uptime:
            now = float(uptime.read().split()[0])
        return now - ticks / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError):
        return -1.0


def delay_drawn(seed: int, client: str, server_round: int, prob: float) -> bool:
    """Return whether ``client`` sleeps after training in ``server_round`` (a pure function).

    One uniform draw per (seed, client, round), compared with ``prob``: for a fixed seed the set
    of delayed (client, round) pairs only grows with ``prob``, and anyone can recompute it.
    """
    return random.Random(f"{seed}:{client}:{server_round}").random() < prob


def _client_record(context: Context) -> ConfigRecord:
    return ConfigRecord({"participant": str(context.node_config.get(NODE_PARTICIPANT, ""))})


def _evaluation(cfg: RunConfig, model: nn.Module,
                data: Split) -> dict[str, int | float | list[int] | list[float]]:
    started = time.perf_counter()
    loss, cm = task.evaluate(model, data.x, data.y, num_classes=cfg.num_classes)
    return {"eval-examples": int(data.y.shape[0]), "eval-loss": float(loss),
            "confusion": [int(v) for v in np.asarray(cm).reshape(-1)],
            "eval-time-s": time.perf_counter() - started}


@app.train()
def train(msg: Message, context: Context) -> Message:
    """Evaluate the received global model on the test split, then train it on the train split."""
    cfg, model, received = _setup(msg, context)
    if cfg.secure_aggregation and RECORD_KEY_CONFIGS not in msg.content.config_records:
        # Never answer a plain request of a secure run: the update would leave in clear.
        raise AppError("a train message without the secure aggregation stages reached a run "
                       "with secure-aggregation on; the update is not sent.",
                       "run the fedcloud ServerApp of the same version as this ClientApp.")
    server_round = int(str(msg.content.config_records["config"]["server-round"]))
    evaluated = _evaluation(cfg, model, _data(cfg, context, "test"))
    data = _data(cfg, context, "train")
    stats = task.train(model, data.x, data.y, epochs=cfg.local_epochs,
                       batch_size=cfg.batch_size, learning_rate=cfg.learning_rate,
                       seed=cfg.seed + server_round)
    delayed = 0.0
    if cfg.delay_prob > 0:
        # Communication-delay study: sleep after training, reproducibly per client and round.
        # Keyed by the participant's name (node ids change with every fresh registration), so
        # the same seed draws the same delays on any deployment: see delay_drawn().
        who = str(context.node_config.get(NODE_PARTICIPANT, "")) or str(context.node_id)
        if delay_drawn(cfg.seed, who, server_round, cfg.delay_prob):
            time.sleep(cfg.delay_s)
            delayed = cfg.delay_s
    metrics = MetricRecord({
        "num-examples": int(stats["num_examples"]),
        "train-loss": float(stats["train_loss"]),
        "train-time-s": float(stats["train_time_s"]),
        "delay-s": delayed,
        **evaluated,
        "process-s": process_age_s(),
    })
    state = {k: v.detach().cpu().numpy() for k, v in model.state_dict().items()}
    if not all(np.isfinite(v).all() for v in state.values()):
        raise AppError(
            f"training on participant {context.node_config.get(NODE_PARTICIPANT, '?')} "
            f"diverged in round {server_round}: the model holds NaN or infinite values.",
            "lower fedcloud:training.learningRate"
            + (" or training.privacy.noiseMultiplier" if cfg.dp_placement != "off" else "")
            + ".")
    delta = _private(cfg, msg, {k: state[k].astype(np.float32) - received[k] for k in state})
    if RECORD_KEY_CONFIGS in msg.content.config_records:  # a secure round: flwr masks `fitres`
        return _secure_reply(cfg, msg, context, delta, metrics, int(stats["num_examples"]))
    # The update, not the trained model: float16 keeps an update's digits where it would round
    # a small change of a large weight away.
    content = RecordDict({"arrays": to_record(delta, cfg.wire_dtype),
                          "metrics": metrics, "client": _client_record(context)})
    return Message(content=content, reply_to=msg)


def _private(cfg: RunConfig, msg: Message, delta: State) -> State:
    """The update with the run's differential privacy applied here (clipped; noised if client)."""
    if cfg.dp_placement == "off":
        return delta
    clipped, _ = clip_update(delta, cfg.dp_clipping_norm)
    if cfg.dp_placement != "client":
        return clipped
    sampled = int(str(msg.content.config_records["config"].get(DP_SAMPLED, 1)))
    std = client_noise_std(cfg.dp_noise_multiplier, cfg.dp_clipping_norm, sampled)
    return add_noise(clipped, std, np.random.default_rng())


def _secure_reply(cfg: RunConfig, msg: Message, context: Context, delta: State,
                  metrics: MetricRecord, examples: int) -> Message:
    """The train reply of a secure round: the update as ``fitres`` for flwr to mask.

    Its weight is the training examples (1 each with differential privacy: a uniform mean).
    ``secure-clipped`` counts the weighted elements outside the protocol's clipping range.
    """
    weight = 1 if cfg.dp_placement != "off" else examples
    arrays = [delta[k].astype(np.float64) for k in delta]  # flwr quantises to 2**29 levels
    secagg = context.state.config_records.get(RECORD_KEY_STATE)
    if secagg is not None:
        ratio = weight / float(str(secagg.get("max_weight", 1.0)))
        bound = float(str(secagg.get("clipping_range", 0.0)))
        metrics["secure-clipped"] = int(sum(int((np.abs(a) * ratio > bound).sum())
                                            for a in arrays))
    fitres = FitRes(status=Status(code=Code.OK, message=""), parameters=to_parameters(arrays),
                    num_examples=weight, metrics={})
    content = fitres_to_recorddict(fitres, keep_input=True)
    content["metrics"] = metrics
    content["client"] = _client_record(context)
    return Message(content=content, reply_to=msg)


@app.evaluate()
def evaluate(msg: Message, context: Context) -> Message:
    """Evaluate the received global model on the local test split (the run's last model)."""
    cfg, model, _ = _setup(msg, context)
    metrics = MetricRecord({**_evaluation(cfg, model, _data(cfg, context, "test")),
                            "process-s": process_age_s()})
    content = RecordDict({"metrics": metrics, "client": _client_record(context)})
    return Message(content=content, reply_to=msg)
