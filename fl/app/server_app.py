"""The Flower ServerApp: read the run config, run the bounded FedAvg, record every round.

Runs on the SuperLink host (the aggregator), started by the SuperLink for each run. Thin: it
reads ``context.run_config`` (:class:`fl.app.runconfig.RunConfig`), builds the model
(``fl/app/task.py``), opens the round writer (``fl/app/store.py``, MLflow) when ``tracking-uri``
is set, and runs :class:`fl.app.strategy.BoundedFedAvg` (one exchange per round); the strategy
records each round and prints its ``FEDCLOUD_ROUND`` line.

It ends with one ``FEDCLOUD_STATUS {json}`` line: ``COMPLETED``; ``NODES_LOST`` when fewer than
``min-nodes`` participants were connected or replying (the store's run closed as ``FAILED``,
Flower's run ``finished:failed``); ``FAILED`` for any other error. SIGTERM/SIGINT close the
store's run as ``KILLED`` before Flower's own handler (or the default action) ends the process.
"""

from __future__ import annotations

import contextlib
import json
import signal
import threading
from collections.abc import Callable, Iterator
from dataclasses import asdict
from logging import ERROR, INFO, WARNING
from types import FrameType
from typing import Any

import torch
from flwr.app import Context
from flwr.common import log
from flwr.serverapp import Grid, ServerApp

from fl.app import task
from fl.app.errors import AppError
from fl.app.records import MISSING, RoundRecord, RoundStore
from fl.app.resume import DIGEST_TAG, Resumable, config_digest
from fl.app.runconfig import RESUME_MARK, ROUND_MARK, STATUS_MARK, RunConfig
from fl.app.strategy import BoundedFedAvg, NodesLostError

STATUS_COMPLETED = "COMPLETED"
STATUS_NODES_LOST = "NODES_LOST"
STATUS_FAILED = "FAILED"
# RunConfig fields not recorded as run params: where and under which name to record, and the
# stack and experiment (run tag ``stack`` and the MLflow experiment itself).
UNRECORDED_FIELDS: tuple[str, ...] = ("tracking_uri", "run_name", "stack", "experiment",
                                      "resume")
Handler = Callable[[int, FrameType | None], Any] | int
# Signals that end the process: the store's run is closed as KILLED first.
KILL_SIGNALS: tuple[signal.Signals, ...] = (signal.SIGTERM, signal.SIGINT)

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
    # Each parameter once, under the RunConfig field name (the model spec's names among them).
    params = {k: v for k, v in asdict(cfg).items() if k not in UNRECORDED_FIELDS}
    params["model_bytes"] = model_bytes
    tags = {"flower_run_id": str(flower_run_id), "stack": cfg.stack,
            DIGEST_TAG: config_digest(cfg)}
    return store.start_run(cfg.run_name or f"flower-{flower_run_id}", params, tags)


class RunCloser:
    """Closes the store's run exactly once, with the status of whatever ends the ServerApp."""

    def __init__(self, store: RoundStore | None) -> None:
        self.store = store
        self.status: str | None = None if store is not None else "none"

    def close(self, status: str) -> None:
        """End the run with ``status`` unless it is already closed (a failure is logged)."""
        if self.status is not None or self.store is None:
            return
        self.status = status
        try:
            self.store.end_run(status)
        except Exception as exc:  # the store may be what failed: keep the original error
            log(ERROR, "closing the store's run as %s failed: %s", status, exc)


@contextlib.contextmanager
def killed_on_signal(closer: RunCloser,
                     signals: tuple[signal.Signals, ...] = KILL_SIGNALS) -> Iterator[None]:
    """Close the run as ``KILLED`` on a signal, then hand the signal to the previous handler.

    Flower's ``flwr-serverapp`` installs its own graceful-exit handler (it exits the process);
    it runs after ours. With no Python handler the default action is taken (the process dies
    by the signal). Signals ignored before stay ignored. Only the main thread can install one.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous: dict[int, Handler] = {}

    def handler(signum: int, frame: FrameType | None) -> None:
        closer.close("KILLED")
        for number, before in previous.items():
            signal.signal(number, before)
        before = previous[signum]
        if callable(before):
            before(signum, frame)
        else:
            signal.raise_signal(signum)

    for sig in signals:
        if signal.getsignal(sig) is not signal.SIG_IGN:
            old = signal.signal(sig, handler)
            previous[sig] = signal.SIG_DFL if old is None else old  # None: set outside Python
    try:
        yield
    finally:
        for number, before in previous.items():
            if signal.getsignal(number) is handler:
                signal.signal(number, before)


@app.main()
def main(grid: Grid, context: Context) -> None:
    """Run ``num-server-rounds`` one-exchange FedAvg rounds and record every round.

    With ``resume`` on and an unfinished run of the same config in the store, that run goes on
    from its last committed round (its committed rounds' lines are printed again, marked
    ``replayed``).
    """
    cfg = RunConfig.from_flower(context.run_config)
    torch.manual_seed(cfg.seed)
    model = task.build_model(cfg.model_spec())
    size = task.model_bytes(model)
    store = open_round_store(cfg)
    initial = {k: v.detach().cpu().numpy() for k, v in model.state_dict().items()}
    found = _resumable(store, cfg, initial)
    if store is None:
        store_run_id = None
    elif found is None:
        store_run_id = _start_store_run(store, cfg, context.run_id, size)
    else:
        store_run_id = _resume_store_run(store, found, context.run_id, cfg)
        initial = found.state if found.state is not None else initial
    closer = RunCloser(store)
    strategy = BoundedFedAvg(cfg, store)
    if found is not None:  # the privacy budget already spent carries over
        strategy.dp_steps = dp_steps(found, cfg)
    first = 1 if found is None else found.server_round + 1
    done_before = 0 if found is None else found.server_round
    log(INFO, "model %s: %d bytes of parameters, sent as %s", cfg.model, size, cfg.wire_dtype)
    log(INFO if cfg.secure_aggregation else WARNING, "protection: %s (%s)", cfg.protection,
        "the aggregator learns only each round's sum" if cfg.secure_aggregation else
        "secure aggregation is off: the aggregator sees each participant's update")
    with killed_on_signal(closer):
        try:
            strategy.run(grid, initial, first_round=first)
        except Exception as exc:
            lost = isinstance(exc, NodesLostError)
            detail = str(exc) if lost else f"{type(exc).__name__}: {exc}"
            _status_line(STATUS_NODES_LOST if lost else STATUS_FAILED, detail,
                         done_before + len(strategy.rounds), store_run_id)
            closer.close("FAILED")
            raise
        except BaseException:  # SystemExit/KeyboardInterrupt: the process is being stopped
            closer.close("KILLED")
            raise
        closer.close("FINISHED")
    _status_line(STATUS_COMPLETED, f"{cfg.rounds} rounds" + _dropouts(strategy.rounds),
                 done_before + len(strategy.rounds), store_run_id)


def _resumable(store: RoundStore | None, cfg: RunConfig,
               initial: dict[str, Any]) -> Resumable | None:
    """The unfinished run to continue, if resuming applies (a store, ``resume`` on)."""
    from fl.app.resume import find_resumable
    from fl.app.store import MlflowRoundWriter

    if not cfg.resume or not isinstance(store, MlflowRoundWriter):
        return None
    try:
        return find_resumable(store, cfg, {k: tuple(v.shape) for k, v in initial.items()})
    except AppError as exc:
        _status_line(STATUS_FAILED, str(exc), 0, None)
        raise


def _resume_store_run(store: RoundStore, found: Resumable, flower_run_id: int,
                      cfg: RunConfig) -> str:
    """Reopen ``found``, print its committed rounds again and the resume line; return its id."""
    from fl.app.resume import reopen, round_line
    from fl.app.store import MlflowRoundWriter

    assert isinstance(store, MlflowRoundWriter)
    run_id = reopen(store, found, flower_run_id)
    for doc in found.rounds:
        log(INFO, "%s %s", ROUND_MARK, json.dumps(round_line(doc), sort_keys=True, default=str))
    line = {"store_run_id": run_id, "was": found.status, "from_round": found.server_round,
            "next_round": found.server_round + 1, "rounds": cfg.rounds,
            "corrupt_rounds": list(found.corrupt), "resumes": found.resumes + 1}
    log(INFO, "%s %s", RESUME_MARK, json.dumps(line, sort_keys=True))
    return run_id


def dp_steps(found: Resumable, cfg: RunConfig) -> list[tuple[float, float]]:
    """The accountant's steps of every round a resumed run already released.

    Committed rounds count as recorded; those whose checkpoint failed, and the one aggregated
    when the run stopped (it may have been sent), count once more each at the smallest noise
    recorded: the budget is never under-reported.

    Raises:
        AppError: A committed round of a run with differential privacy lacks its record.
    """
    if cfg.dp_placement == "off":
        return []
    steps = []
    for doc in found.rounds:
        extra = doc.get("extra") or {}
        if "dp_noise_multiplier_effective" not in extra:
            raise AppError(
                f"round {doc.get('server_round')} of store run {found.run_id} has no "
                "differential-privacy record, so the budget it spent is unknown.",
                "start a new run: set fedcloud:training.resume to false.")
        steps.append((float(extra["dp_noise_multiplier_effective"]), 1.0))
    least = min((z for z, _ in steps), default=cfg.dp_noise_multiplier)
    return steps + [(least, 1.0)] * (len(found.corrupt) + 1)


def _dropouts(rounds: list[RoundRecord]) -> str:
    """``"; degraded: hospital-kr missed rounds 2, 3"`` for a run that went on without someone."""
    missed: dict[str, list[int]] = {}
    for record in rounds:
        for name in record.extra.get(MISSING, ()) or ():
            missed.setdefault(str(name), []).append(record.server_round)
    if not missed:
        return ""
    return "; degraded: " + "; ".join(
        f"{name} missed round(s) {', '.join(map(str, sorted(r)))}"
        for name, r in sorted(missed.items()))
