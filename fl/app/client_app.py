"""The Flower ClientApp: runs on each participant's SuperNode, on that participant's data only.

Thin: it reads the run config (``context.run_config``) and the node's data directory
(``context.node_config["data-dir"]``, set by ``fl/orchestrator/supernode.py``), and calls
``fl/app/task.py``.
Each reply carries exactly one MetricRecord with ``num-examples`` (and one ArrayRecord for
train), plus a ConfigRecord naming the participant for the per-client figures.
"""

from __future__ import annotations

import random
import time
from pathlib import Path

import numpy as np
import torch
from flwr.app import ArrayRecord, ConfigRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp
from torch import nn

from fl.app import task
from fl.app.data import Split, load_split
from fl.app.runconfig import NODE_DATA_DIR, NODE_PARTICIPANT, NODE_TORCH_THREADS, RunConfig

app = ClientApp()


def _setup(msg: Message, context: Context, split: str) -> tuple[RunConfig, nn.Module, Split]:
    cfg = RunConfig.from_flower(context.run_config)
    threads = int(str(context.node_config.get(NODE_TORCH_THREADS, 0)))
    if threads > 0:  # several SuperNodes sharing a host must not oversubscribe its cores
        torch.set_num_threads(threads)
    data_dir = Path(str(context.node_config[NODE_DATA_DIR]))
    model = task.build_model(cfg.model_spec())
    model.load_state_dict(msg.content.array_records["arrays"].to_torch_state_dict())
    data = load_split(cfg.model, data_dir, split, cfg.image_size)
    return cfg, model, data


def delay_drawn(seed: int, client: str, server_round: int, prob: float) -> bool:
    """Return whether ``client`` sleeps after training in ``server_round`` (a pure function).

    One uniform draw per (seed, client, round), compared with ``prob``: for a fixed seed the set
    of delayed (client, round) pairs only grows with ``prob``, and anyone can recompute it.
    """
    return random.Random(f"{seed}:{client}:{server_round}").random() < prob


def _client_record(context: Context) -> ConfigRecord:
    return ConfigRecord({"participant": str(context.node_config.get(NODE_PARTICIPANT, ""))})


@app.train()
def train(msg: Message, context: Context) -> Message:
    """Train the received global model on the local training split."""
    cfg, model, data = _setup(msg, context, "train")
    server_round = int(str(msg.content.config_records["config"]["server-round"]))
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
    })
    content = RecordDict({"arrays": ArrayRecord(model.state_dict()),
                          "metrics": metrics, "client": _client_record(context)})
    return Message(content=content, reply_to=msg)


@app.evaluate()
def evaluate(msg: Message, context: Context) -> Message:
    """Evaluate the received global model on the local test split (loss + confusion matrix)."""
    cfg, model, data = _setup(msg, context, "test")
    loss, cm = task.evaluate(model, data.x, data.y,
                             num_classes=cfg.num_classes)
    metrics = MetricRecord({
        "num-examples": int(data.y.shape[0]),
        "eval-loss": float(loss),
        "confusion": [int(v) for v in np.asarray(cm).reshape(-1)],
    })
    content = RecordDict({"metrics": metrics, "client": _client_record(context)})
    return Message(content=content, reply_to=msg)
