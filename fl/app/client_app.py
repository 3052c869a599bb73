"""The Flower ClientApp: runs on each participant's SuperNode, on that participant's data only.

Thin: it reads the run config (``context.run_config``) and the node config (``data-dir``, set
by ``fl/orchestrator/supernode.py``; optional ``cache-dir``), and calls ``fl/app/task.py``.
One message a round (``fl/app/protocol.py``): the ``train`` handler evaluates the global model
it received on the local test split, trains it, and returns the update (as ``wire-dtype``) with
both metric sets; ``evaluate`` serves the run's final evaluation. Each reply carries one
MetricRecord (``num-examples`` = training examples, the FedAvg weight) and a ConfigRecord
naming the participant.
"""

from __future__ import annotations

import os
import random
import time
from pathlib import Path

import numpy as np
import torch
from flwr.app import ConfigRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp
from torch import nn

from fl.app import task
from fl.app.cache import load_split_cached
from fl.app.data import Split
from fl.app.runconfig import (
    NODE_CACHE_DIR,
    NODE_DATA_DIR,
    NODE_PARTICIPANT,
    NODE_TORCH_THREADS,
    RunConfig,
)
from fl.app.wire import from_record, to_record

app = ClientApp()


def _setup(msg: Message, context: Context) -> tuple[RunConfig, nn.Module]:
    cfg = RunConfig.from_flower(context.run_config)
    threads = int(str(context.node_config.get(NODE_TORCH_THREADS, 0)))
    if threads > 0:  # several SuperNodes sharing a host must not oversubscribe its cores
        torch.set_num_threads(threads)
    model = task.build_model(cfg.model_spec())
    state = from_record(msg.content.array_records["arrays"])
    model.load_state_dict({k: torch.from_numpy(v) for k, v in state.items()})
    return cfg, model


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
    cfg, model = _setup(msg, context)
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
    content = RecordDict({"arrays": to_record(state, cfg.wire_dtype),
                          "metrics": metrics, "client": _client_record(context)})
    return Message(content=content, reply_to=msg)


@app.evaluate()
def evaluate(msg: Message, context: Context) -> Message:
    """Evaluate the received global model on the local test split (the run's last model)."""
    cfg, model = _setup(msg, context)
    metrics = MetricRecord({**_evaluation(cfg, model, _data(cfg, context, "test")),
                            "process-s": process_age_s()})
    content = RecordDict({"metrics": metrics, "client": _client_record(context)})
    return Message(content=content, reply_to=msg)
