"""``fedcloud plan``: choose the aggregator's cloud, region and VM size for a stack.

Prints a table of the pick per weight vector with its cost, latency, emissions and the change
against the stack's baseline on both cost bases, job and monthly (``--json``: one JSON object,
see ``PlanResult.to_dict``); ``--plot`` writes the front. Heavy imports (pymoo, matplotlib,
rich) happen inside the command.
"""

from __future__ import annotations

import argparse
import json
from typing import TYPE_CHECKING

from fedcloud.cli.main import add_stack_args, common_parser, stack_from_args

if TYPE_CHECKING:
    from optimizer.request import PlanRequest
    from optimizer.result import PlanResult


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add ``fedcloud plan``."""
    p = sub.add_parser("plan", parents=[common_parser()],
                       help="choose the aggregator's cloud, region and VM size (NSGA-II)")
    add_stack_args(p)
    p.add_argument("--method", choices=["nsga2", "exhaustive"],
                   help="search method (default: the stack's fedcloud:optimizer.method)")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.add_argument("--plot", metavar="FILE.png",
                   help="write the front, each weight's pick and the baseline")
    p.set_defaults(func=cmd_plan)


def cmd_plan(args: argparse.Namespace) -> int:
    """Run the optimizer for the stack and print the plan."""
    from fedcloud.federation import plan_request
    from optimizer import plan

    request = plan_request(stack_from_args(args))
    result = plan(request, method=args.method)
    if args.plot:
        from optimizer.plot import plot_plan

        plot_plan(result, args.plot)
    if args.json:
        print(json.dumps(result.to_dict(), indent=2))
    else:
        print_plan(request, result)
        if args.plot:
            print(f"plot: {args.plot}")
    return 0


def _pct(x: float, good_when_positive: bool) -> str:
    colour = "green" if (x > 0) == good_when_positive and abs(x) >= 0.005 else (
        "red" if abs(x) >= 0.005 else "white")
    return f"[{colour}]{x:+.1f}%[/{colour}]"


def print_plan(request: PlanRequest, result: PlanResult) -> None:
    """Print the plan as a rich table (wide enough for its columns when piped)."""
    import sys

    from rich.console import Console
    from rich.table import Table

    from optimizer.result import Choice, Comparison, Objectives

    console = Console(width=None if sys.stdout.isatty() else 160)
    cur = result.currency
    rate = f"1 USD = {result.per_usd:g} {cur}" + (
        f" as of {result.currency_as_of}" if result.currency_as_of else "")
    console.print(
        f"[bold]fedcloud plan[/bold] stack [cyan]{request.stack}[/cyan]: {result.method}, "
        f"seed {result.seed}, {result.elapsed_s:.2f} s; {result.candidates} candidates, "
        f"{result.feasible} within limits, {result.evaluated} evaluated, "
        f"front of {len(result.front)}")
    console.print(
        f"limits: job cost <= {result.max_cost:,.0f} {cur}, largest RTT <= "
        f"{result.max_latency_ms:g} ms"
        + (f", emissions <= {result.max_co2e_kg:g} kg CO2e" if result.max_co2e_kg else "")
        + f" ({rate}); aggregator memory need {result.memory_need_gib:.2f} GiB; participants: "
        + ", ".join(f"{p.name} @ {p.location.label}" for p in request.participants))

    table = Table(title="Aggregator placement per weight (cost:latency[:emissions])",
                  title_justify="left")
    for col in ("weight", "cloud:region / instance", "vCPU/GiB", f"job cost {cur}",
                "max RTT ms", "mean RTT ms", "job h", "g CO2e", "cost cut job",
                "cost cut month", "max RTT", "job time", "CO2e"):
        wide = col == "cloud:region / instance"
        table.add_column(col, justify="left" if wide or col == "weight" else "right",
                         no_wrap=wide, min_width=34 if wide else None)

    def row(label: str, c: Choice, o: Objectives, cmp: Comparison | None) -> None:
        co2 = "n/a" if o.co2e_kg is None else f"{o.co2e_kg * 1000:.1f}"
        cells = [label, c.label, f"{c.vcpus}/{c.memory_gib:g}", f"{o.cost_local:,.0f}",
                 f"{o.latency_ms:.0f}", f"{o.mean_latency_ms:.0f}", f"{o.job_hours:.2f}", co2]
        if cmp is not None:
            cells += [_pct(cmp.cost_cut_pct, True), _pct(cmp.monthly_cost_cut_pct, True),
                      _pct(cmp.latency_change_pct, False),
                      _pct(cmp.job_hours_change_pct, False),
                      "n/a" if cmp.co2e_change_pct is None else _pct(cmp.co2e_change_pct, False)]
        else:
            cells += ["", "", "", "", ""]
        table.add_row(*cells)

    if result.baseline is not None:
        b = result.baseline
        row("baseline" if result.baseline_meets_limits else "baseline (breaks limits)",
            b.choice, b.objectives, None)
    for wc in result.choices:
        row(":".join(f"{w:g}" for w in wc.weights), wc.point.choice, wc.point.objectives,
            wc.vs_baseline)
    console.print(table)
    if result.baseline is not None:
        console.print("changes are against the baseline: cost cut > 0 is cheaper (job: VM "
                      "hours + egress; month: the VM always on, 730 h, no egress); RTT, job "
                      "time and CO2e < 0 are reductions.")
    if result.no_grid_factor:
        console.print(f"left out (no grid emissions factor): {', '.join(result.no_grid_factor)}")
    how = "pinned by fedcloud:aggregator.pin" if result.pinned else (
        "pick of the first weight " + ":".join(f"{w:g}" for w in request.weights[0]))
    target = "" if result.target == "auto" else f"; target {result.target}"
    console.print(f"deployed: [bold]{result.choice.label}[/bold] ({how}{target}), "
                  f"{result.objectives.cost_local:,.0f} {cur}, "
                  f"{result.objectives.latency_ms:.0f} ms largest RTT")
