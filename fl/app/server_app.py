"""The Flower ServerApp: read the run config, run the bounded FedAvg, record every round.

Runs on the SuperLink host (the aggregator), started by the SuperLink for each run. Thin: it
reads ``context.run_config`` (:class:`fl.app.runconfig.RunConfig`), builds the model
(``fl/app/task.py``), opens the round writer (``fl/app/store.py``, MLflow) when ``tracking-uri``
is set, and drives :class:`fl.app.strategy.BoundedFedAvg` with ``FedAvg.start``; the strategy
records each round and prints its ``FEDCLOUD_ROUND`` line.

It ends with one ``FEDCLOUD_STATUS {json}`` line: ``COMPLETED``; ``NODES_LOST`` when fewer than
``min-nodes`` participants were connected or replying (the store's run closed as ``FAILED``,
Flower's run ``finished:failed``); ``FAILED`` for any other error.
"""

from __future__ import annotations

import json
from logging import INFO

import torch
from flwr.app import ArrayRecord, Context
from flwr.common import log
from flwr.serverapp import Grid, ServerApp

from fl.app import task
from fl.app.records import RoundStore
from fl.app.runconfig import STATUS_MARK, RunConfig
from fl.app.strategy import BoundedFedAvg, NodesLostError

STATUS_COMPLETED = "COMPLETED"
STATUS_NODES_LOST = "NODES_LOST"
STATUS_FAILED = "FAILED"
# Run config keys that are not recorded as run params (where and under which name to record).
UNRECORDED_KEYS: tuple[str, ...] = ("tracking-uri", "run-name")

app = ServerApp()


def _status_line(status: str, detail: str, rounds: int, run_id: str | None) -> None:
    doc = {"status": status, "detail": detail, "rounds_completed": rounds, "store_run_id": run_id}
    log(INFO, "%s %s", STATUS_MARK, json.dumps(doc, sort_keys=True))


def open_round_store(cfg: RunConfig) -> RoundStore | None:
    """Return the round writer for ``tracking-uri`` (``None`` when it is empty)."""
    if not cfg.tracking_uri:
        return None
    from fl.app.store import open_writer  # imports MLflow's telemetry switch, not MLflow

    return open_writer(cfg.tracking_uri, cfg.experiment)


def _start_store_run(store: RoundStore, cfg: RunConfig, flower_run_id: int,
                     model_bytes: int) -> str:
    params = {**cfg.model_spec(),
              **{k: v for k, v in cfg.to_flower().items() if k not in UNRECORDED_KEYS},
              "model_bytes": model_bytes}
    tags = {"flower_run_id": str(flower_run_id), "stack": cfg.stack}
    return store.start_run(cfg.run_name or f"flower-{flower_run_id}", params, tags)


@app.main()
def main(grid: Grid, context: Context) -> None:
    """Run ``num-server-rounds`` of bounded FedAvg and record every round."""
    cfg = RunConfig.from_flower(context.run_config)
    torch.manual_seed(cfg.seed)
    model = task.build_model(cfg.model_spec())
    size = task.model_bytes(model)
    store = open_round_store(cfg)
    store_run_id = None if store is None else _start_store_run(store, cfg, context.run_id, size)
    strategy = BoundedFedAvg(cfg, store)
    log(INFO, "model %s: %d bytes of parameters", cfg.model, size)
    try:
        strategy.start(grid=grid, initial_arrays=ArrayRecord(model.state_dict()),
                       num_rounds=cfg.rounds, timeout=cfg.phase_timeout_s,
                       evaluate_fn=strategy.checkpoint)
    except Exception as exc:
        lost = isinstance(exc, NodesLostError)
        detail = str(exc) if lost else f"{type(exc).__name__}: {exc}"
        _status_line(STATUS_NODES_LOST if lost else STATUS_FAILED, detail,
                     len(strategy.rounds), store_run_id)
        if store is not None:
            store.end_run("FAILED")
        raise
    if store is not None:
        store.end_run("FINISHED")
    _status_line(STATUS_COMPLETED, f"{cfg.rounds} rounds", len(strategy.rounds), store_run_id)
