"""``fedcloud models``: list the recorded rounds, recommend the best one, download it, plot.

The store is the stack's (``fedcloud:registry.trackingUri``, or the embedded store under the
stack's state directory). MLflow and torch are imported only inside the command functions.
"""

from __future__ import annotations

import argparse
import json
import sys
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from fedcloud.cli.main import add_stack_args, common_parser, stack_from_args
from fedcloud.core.errors import RegistryError

if TYPE_CHECKING:
    from fl.registry.store import MlflowRoundStore, RoundInfo, RunInfo


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add ``fedcloud models`` and its subcommands."""
    parent = common_parser()
    models = sub.add_parser("models", parents=[parent],
                            help="list, recommend, download and plot the recorded global models")
    msub = models.add_subparsers(dest="models_command", required=True, metavar="ACTION")

    p = msub.add_parser("list", parents=[parent], help="a table of rounds and metrics")
    add_stack_args(p)
    p.add_argument("--run", metavar="ID", help="only this run (id, 6+ character prefix, or name)")
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    p.set_defaults(func=cmd_list)

    p = msub.add_parser("best", parents=[parent],
                        help="choose the best round and register it with the alias 'best'")
    add_stack_args(p)
    p.add_argument("--metric", required=True,
                   help="the metric to optimise (loss is minimised, the others maximised)")
    p.add_argument("--min", action="append", default=[], metavar="METRIC=VALUE",
                   help="a lower bound, e.g. accuracy=0.9 (repeatable)")
    p.add_argument("--max", action="append", default=[], metavar="METRIC=VALUE",
                   help="an upper bound, e.g. loss=0.5 (repeatable)")
    p.add_argument("--run", metavar="ID", help="the run to choose from (default: the newest)")
    p.add_argument("--json", action="store_true", help="print JSON")
    p.set_defaults(func=cmd_best)

    p = msub.add_parser("download", parents=[parent],
                        help="write a round's model (torch state_dict) and its JSON card")
    add_stack_args(p)
    which = p.add_mutually_exclusive_group(required=True)
    which.add_argument("--round", type=int, metavar="N", help="this round (of --run)")
    which.add_argument("--best", action="store_true", help="the round marked best")
    p.add_argument("--run", metavar="ID", help="the run of --round (default: the newest)")
    p.add_argument("--out", required=True, metavar="PATH",
                   help="checkpoint file (the card is written next to it as .json)")
    p.set_defaults(func=cmd_download)

    p = msub.add_parser("plot", parents=[parent], help="metrics per round as a PNG")
    add_stack_args(p)
    p.add_argument("--run", metavar="ID", help="the run to plot (default: the newest)")
    p.add_argument("--out", required=True, metavar="FILE.png")
    p.set_defaults(func=cmd_plot)

    p = msub.add_parser("store", parents=[parent],
                        help="print where the store is and the 'mlflow ui' command to browse it")
    add_stack_args(p)
    p.set_defaults(func=cmd_store)


def _store(args: argparse.Namespace) -> MlflowRoundStore:
    import os

    from fl.registry.store import open_store

    # MLflow's INFO lines (database migrations) are noise on the command line.
    os.environ.setdefault("MLFLOW_LOGGING_LEVEL", "WARNING")
    registry = stack_from_args(args).registry
    return open_store(registry.location, registry.experiment)


def _round_row(info: RunInfo, r: RoundInfo) -> dict[str, Any]:
    return {"run_id": info.run_id, "run_name": info.run_name, "status": info.status,
            "round": r.server_round, "metrics": dict(r.metrics),
            "participants": list(r.participants)}


def cmd_list(args: argparse.Namespace) -> int:
    """Print the rounds of every run (or of ``--run``) with their metrics."""
    from fl.app.records import METRICS

    store = _store(args)
    runs = [store.run(args.run)] if args.run else store.runs()
    rows = [_round_row(info, r) for info in runs for r in info.rounds]
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"{store.experiment} ({store.tracking_uri})")
    for col in ("run", "started (UTC)", "status", "round", *METRICS, "participants"):
        table.add_column(col, justify="right" if col in METRICS or col == "round" else "left")
    for info in runs:
        started = datetime.fromtimestamp(info.start_time / 1000, UTC).strftime("%Y-%m-%d %H:%M")
        label = f"{info.run_id[:8]} {info.run_name}"
        if not info.rounds:
            table.add_row(label, started, info.status, "-", *["" for _ in METRICS], "")
        for r in info.rounds:
            table.add_row(label, started, info.status, str(r.server_round),
                          *[f"{r.metrics.get(m, float('nan')):.4f}" for m in METRICS],
                          str(len(r.participants)))
    Console(width=160).print(table)
    return 0


def cmd_best(args: argparse.Namespace) -> int:
    """Recommend the best round under the criteria and register it as ``best``."""
    from fl.registry.criteria import Criteria

    criteria = Criteria.parse(args.metric, args.min, args.max)
    store = _store(args)
    rec = store.recommend(criteria, args.run)
    result = {"run_id": rec.round.run_id, "round": rec.round.server_round,
              "metrics": dict(rec.round.metrics), "criteria": criteria.to_dict(),
              "model_name": rec.model_name, "version": rec.version, "alias": "best",
              "model_uri": f"models:/{rec.model_name}@best", "candidates": rec.candidates}
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        figures = ", ".join(f"{k} {v:.4f}" for k, v in rec.round.metrics.items())
        print(f"best ({criteria.describe()}): round {rec.round.server_round} of run "
              f"{rec.round.run_id[:8]} out of {rec.candidates} round(s): {figures}")
        print(f"registered as {rec.model_name} version {rec.version} (alias 'best'), an MLflow "
              f"Model: mlflow.pytorch.load_model('models:/{rec.model_name}@best')")
    return 0


def cmd_download(args: argparse.Namespace) -> int:
    """Write the chosen round's checkpoint and card."""
    if args.round is not None and args.round < 0:
        raise RegistryError(f"--round {args.round}: rounds start at 0.", "use --round 0 or more.")
    if args.best and args.run:
        raise RegistryError("--run does not apply to --best (the best round names its run).",
                            "drop --run, or use --round N --run ID.")
    store = _store(args)
    checkpoint, card = store.download(args.out, server_round=args.round, best=args.best,
                                      run_id=args.run)
    print(f"wrote {checkpoint} and {card}")
    return 0


def cmd_plot(args: argparse.Namespace) -> int:
    """Write the metrics-per-round PNG."""
    store = _store(args)
    out = store.plot(args.out, args.run)
    print(f"wrote {out}")
    return 0


def cmd_store(args: argparse.Namespace) -> int:
    """Print the store's tracking URI and how to browse it with the MLflow UI."""
    from fl.registry.store import resolve_store

    registry = stack_from_args(args).registry
    experiment = registry.experiment
    uri, artifacts = resolve_store(registry.location)
    print(f"experiment:   {experiment}")
    print(f"tracking URI: {uri}")
    if artifacts:
        print(f"artifacts:    {artifacts}")
        print("browse:       MLFLOW_DISABLE_TELEMETRY=true DO_NOT_TRACK=true .venv/bin/mlflow ui "
              f"--host 127.0.0.1 --port 5000 --backend-store-uri {uri} "
              f"--default-artifact-root {artifacts}")
    else:
        print(f"browse:       open {uri} (a tracking server)")
    sys.stdout.flush()
    return 0
