"""The spot market's saving on a stack: plan it with ``market=auto`` and ``onDemand``, compare.

``spot_cost_cut("covid19")`` is the case study's figure (``benchmarks/resume.py`` can pass its
measured resume overhead); optimizer/README.md, "Spot market".
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from optimizer.planner import plan
from optimizer.request import AUTO, ON_DEMAND, PlanRequest


def spot_cost_cut(stack: str = "covid19", method: str = "exhaustive",
                  resume_overhead_s: float | None = None,
                  interruptions_per_hour: float | None = None,
                  market: str = AUTO) -> dict[str, Any]:
    """Plan ``stacks/Pulumi.<stack>.yaml`` in ``market`` and on demand; return the cost cut.

    Args:
        stack: The stack name.
        method: ``exhaustive`` (default: the ground truth, deterministic) or ``nsga2``.
        resume_overhead_s: Overrides ``costModel.resumeOverheadS`` (e.g. a measured figure).
        interruptions_per_hour: Overrides ``costModel.spotInterruptionsPerHour``.
        market: ``auto`` (default) or ``spot``.

    Returns:
        ``spot_cost_cut_pct`` (the deployed pick's expected job cost against the on-demand
        plan's deployed pick, percent, positive = cheaper), both picks (choice and objectives),
        the per-weight cuts and the two assumptions used.
    """
    from fedcloud.core.stack import load

    cfg = load(stack)
    cm = cfg.plan.cost_model
    cm = replace(cm, resume_overhead_s=(cm.resume_overhead_s if resume_overhead_s is None
                                        else float(resume_overhead_s)),
                 spot_interruptions_per_hour=(cm.spot_interruptions_per_hour
                                              if interruptions_per_hour is None
                                              else float(interruptions_per_hour)))
    settings = replace(cfg.plan, cost_model=cm)

    def run(m: str) -> Any:
        request = PlanRequest.build(replace(settings, market=m), cfg.participants,
                                    list(settings.clouds), cfg.stack)
        return plan(request, method=method)

    spot, on_demand = run(market), run(ON_DEMAND)
    cut = 100.0 * (on_demand.objectives.cost_usd - spot.objectives.cost_usd) / (
        on_demand.objectives.cost_usd)
    full = spot.to_dict()
    return {
        "stack": stack,
        "market": market,
        "method": method,
        "spot_cost_cut_pct": round(cut, 2),
        "pick": {"choice": full["choice"], "objectives": full["objectives"]},
        "on_demand": {"choice": on_demand.choice.to_dict(True),
                      "objectives": on_demand.objectives.to_dict(True)},
        "per_weight": [{"weights": c["weights"], "market": c["choice"]["market"],
                        "cost_cut_pct": (c["vs_on_demand"] or {}).get("cost_cut_pct")}
                       for c in full["choices"]],
        "spot_interruptions_per_hour": cm.spot_interruptions_per_hour,
        "resume_overhead_s": cm.resume_overhead_s,
    }
