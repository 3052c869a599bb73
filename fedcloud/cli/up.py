"""``fedcloud up|down --stack local``: the whole job on this machine, and its clean-up.

Cloud stacks are deployed with ``pulumi up``; these commands run the local composition
(:mod:`fedcloud.local.stack`), whose outputs have the same keys as the Pulumi program's.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from fedcloud.cli.main import add_stack_args, common_parser, stack_from_args


def register(sub: Any) -> None:
    """Add the ``up`` and ``down`` subcommands."""
    up = sub.add_parser("up", parents=[common_parser()],
                        help="run the whole job of a local stack (plan, VMs, train, registry)",
                        description="Run a `target: local` stack end to end on this machine.")
    add_stack_args(up)
    up.add_argument("--json", action="store_true",
                    help="print the outputs as JSON on stdout (progress goes to stderr)")
    up.set_defaults(func=run_up)
    down = sub.add_parser("down", parents=[common_parser()],
                          help="stop everything a local `up` started",
                          description="Stop the SuperLink, SuperNodes and emulated VMs: by "
                                      "recorded PID, then every process carrying the stack's "
                                      "marker; unreadable state files are set aside.")
    add_stack_args(down)
    down.set_defaults(func=run_down)


def _print_outputs(console: Any, outputs: dict[str, Any]) -> None:
    from rich.table import Table

    agg, plan, tr = outputs["aggregator"], outputs["plan"], outputs["training"]
    table = Table(title="stack outputs", show_header=True, header_style="bold")
    table.add_column("output")
    table.add_column("value")
    table.add_row("aggregator", f"{agg['cloud']} {agg['superlinkAddress']} (TLS, node auth)")
    choice = plan["choice"]
    cut = plan.get("cut") or {}
    table.add_row("plan", f"{choice['cloud']}:{choice['region']}/{choice['instanceType']}: "
                  f"{plan['costLocal']:,.0f} {plan['currency']}, {plan['latencyMs']:.0f} ms; "
                  f"cost cut vs baseline {cut.get('costCutPct', float('nan')):+.1f}%")
    for name, p in outputs["participants"].items():
        tried = ", ".join(f"{t['vm']}{'' if t['ok'] else ' x'}" for t in p["tried"])
        table.add_row(f"participant {name}", f"{p['vm']} ({p['status']}; tried {tried})")
    best = tr.get("bestModel") or {}
    metrics = best.get("metrics") or {}
    table.add_row("training", f"run {tr['runId']} {tr['status']}, {tr['rounds']} rounds")
    if best:
        table.add_row("best model", f"round {best.get('round')}: F1 {metrics.get('f1', 0):.3f}, "
                      f"accuracy {metrics.get('accuracy', 0):.3f} -> {best.get('file', '')}")
    table.add_row("protection", _protection(outputs.get("protection") or {}, tr))
    console.print(table)


def _protection(protection: dict[str, Any], training: dict[str, Any]) -> str:
    """``secure aggregation (SecAgg+); DP client, epsilon 9.01 at delta 1e-05``."""
    text = ("secure aggregation (SecAgg+)" if protection.get("secureAggregation")
            else "secure aggregation OFF: the aggregator sees each update")
    privacy = protection.get("privacy")
    if privacy:
        eps = training.get("epsilon")
        spent = f"epsilon {eps:.2f}" if isinstance(eps, int | float) else "epsilon n/a"
        text += f"; DP {privacy['placement']}, {spent} at delta {privacy['delta']:g}"
    return text


def run_up(args: argparse.Namespace) -> int:
    """Run ``fedcloud up``."""
    from rich.console import Console

    from fedcloud.local.stack import OUTPUTS_FILE, up

    cfg = stack_from_args(args)
    console = Console(stderr=bool(args.json))
    outputs = up(cfg, report=console.print, status=console.status)
    if args.json:
        sys.stdout.write(json.dumps(outputs, indent=1, sort_keys=True) + "\n")
    else:
        _print_outputs(console, outputs)
        total = sum(outputs["timings"].values())
        console.print(f"outputs: {cfg.state_dir / OUTPUTS_FILE}; phases took {total:.0f} s. "
                      f"Stop everything with: fedcloud down --stack {cfg.stack}")
    return 0


def run_down(args: argparse.Namespace) -> int:
    """Run ``fedcloud down``: best effort, so it reports what it skipped instead of failing."""
    from fedcloud.local.stack import down

    cfg = stack_from_args(args)
    done = down(cfg)
    if done.stopped:
        orphans = f" ({done.orphans} found by the stack's marker only)" if done.orphans else ""
        print(f"stopped {done.stopped} process group(s)/VM(s) of stack {cfg.stack}{orphans}")
    else:
        print(f"nothing of stack {cfg.stack} was running")
    for note in done.notes:
        print(f"note: {note}")
    return 0
