"""Aggregator Deployment Optimizer: catalogue of clouds -> NSGA-II -> one (cloud, region, VM).

Public API::

    from optimizer import PlanRequest, plan
    result = plan(PlanRequest.from_raw(raw_config))      # method from the stack, or
    result = plan(request, method="exhaustive")          # the ground truth
    result.choice, result.objectives, result.choices, result.to_dict()
    from optimizer import spot_cost_cut; spot_cost_cut("covid19")   # spot vs on demand, %

Importing this package stays light (numpy and the catalogue; pymoo only when NSGA-II runs;
never pulumi, torch or flwr).
"""

from optimizer.planner import plan
from optimizer.request import PlanRequest
from optimizer.result import PlanResult
from optimizer.spot import spot_cost_cut

__all__ = ["PlanRequest", "PlanResult", "plan", "spot_cost_cut"]
