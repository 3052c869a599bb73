"""``plan(request)``: filter the catalogue, search the front, pick one point per weight.

Both methods share everything but the search: the same filtered space and precomputed
objectives (:mod:`optimizer.space`), the same front definition and the same weighted pick
(:mod:`optimizer.front`). ``exhaustive`` evaluates every option of the space (the ground truth);
``nsga2`` evaluates what pymoo's NSGA-II visits (:mod:`optimizer.nsga2`).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, replace

import numpy as np

from fedcloud.core.errors import PlanError
from optimizer.catalog import Catalog, VmRow, load_catalog
from optimizer.cost import HOURS_PER_MONTH
from optimizer.front import pareto_front, pick
from optimizer.request import METHODS, ON_DEMAND, SPOT, Placement, PlanRequest
from optimizer.result import (
    Choice,
    Comparison,
    Objectives,
    OnDemandComparison,
    PlanResult,
    Point,
    WeightedChoice,
)
from optimizer.space import SearchSpace, build_space, evaluate_placement, spot_capable


@dataclass(frozen=True)
class Search:
    """The outcome of one method on one space: front indices and how many options it saw."""

    front: np.ndarray
    evaluated: int


def search(space: SearchSpace, method: str, seed: int, pop_size: int, generations: int
           ) -> Search:
    """Return the feasible Pareto front of ``space`` found by ``method``."""
    if method == "exhaustive":
        return Search(pareto_front(space.objectives, np.flatnonzero(space.feasible)), len(space))
    if method == "nsga2":
        from optimizer import nsga2  # pymoo is imported only when NSGA-II runs

        run = nsga2.run(space, seed=seed, pop_size=pop_size, generations=generations)
        found = run.evaluated[space.feasible[run.evaluated]]
        # An option with the same objectives as an earlier one in catalogue order is the same
        # point; report the same representative the exhaustive method does.
        return Search(pareto_front(space.objectives, space.canonical[found]), len(run.evaluated))
    raise PlanError(f"unknown method '{method}'.", f"use one of: {', '.join(METHODS)}.")


def _objectives(row: VmRow, cat: Catalog, per_usd: float, price: float, cost_usd: float,
                latency_ms: float, mean_latency_ms: float, job_hours: float, egress_usd: float,
                energy_kwh: float, co2e_kg: float | None, interruptions: float) -> Objectives:
    grid = cat.grid[(row.cloud, row.region)]
    return Objectives(
        cost_usd=cost_usd, cost_local=cost_usd * per_usd, latency_ms=latency_ms,
        mean_latency_ms=mean_latency_ms, job_hours=job_hours, egress_usd=egress_usd,
        co2e_kg=co2e_kg, energy_kwh=energy_kwh,
        monthly_cost_usd=float(price * HOURS_PER_MONTH),
        grid_kg_per_kwh=grid.kg_per_kwh, grid_basis=grid.basis, interruptions=interruptions)


def _point(space: SearchSpace, i: int, per_usd: float, cat: Catalog) -> Point:
    row, price = space.rows[i], float(space.price_usd_per_hour[i])
    return Point(Choice.of(row, space.markets[i], price), _objectives(
        row, cat, per_usd, price, float(space.cost_usd[i]), float(space.latency_ms[i]),
        float(space.mean_latency_ms[i]), float(space.job_hours[i]), float(space.egress_usd[i]),
        float(space.energy_kwh[i]), float(space.co2e_kg[i]), float(space.interruptions[i])))


def _infeasible(request: PlanRequest, space: SearchSpace) -> PlanError:
    """Explain which limit binds and list the closest options."""
    cur = request.currency
    cost_local = space.cost_usd * cur.per_usd
    c_min, l_min = float(cost_local.min()), float(space.latency_ms.min())
    ratio = np.maximum(space.cost_usd / space.max_cost_usd, space.latency_ms / space.max_latency_ms)
    if request.max_co2e_kg is not None:
        ratio = np.maximum(ratio, space.co2e_kg / request.max_co2e_kg)
        co2_min = float(space.co2e_kg.min())
        if co2_min > request.max_co2e_kg:
            return PlanError(
                f"{request.source}: no option meets maxCo2eKg {request.max_co2e_kg:g}; the "
                f"lowest-emission option emits {co2_min:.3g} kg CO2e.",
                f"raise fedcloud:limits.maxCo2eKg to at least {co2_min:.3g}, or lower the "
                "cost model's rounds/setupHours.")
    closest: list[int] = []
    for i in np.lexsort((np.arange(len(space)), ratio)):
        if space.canonical[i] == i and len(closest) < 3:
            closest.append(int(i))
    names = "; ".join(f"{space.rows[i].cloud}:{space.rows[i].region}/"
                      f"{space.rows[i].instance_type} ({cost_local[i]:,.0f} {cur.code}, "
                      f"{space.latency_ms[i]:.0f} ms)" for i in closest)
    limits = (f"maxCost {request.max_cost:,.0f} {cur.code}, maxLatencyMs "
              f"{request.max_latency_ms:g}")
    cost_binds, lat_binds = c_min > request.max_cost, l_min > request.max_latency_ms
    if cost_binds and lat_binds:
        what = (f"both limits bind: the cheapest option costs {c_min:,.0f} {cur.code} and the "
                f"nearest region's largest RTT is {l_min:.0f} ms")
        fix = (f"raise fedcloud:limits.maxCost to at least {c_min:,.0f} and "
               f"fedcloud:limits.maxLatencyMs to at least {l_min:.0f}")
    elif cost_binds:
        what = f"the cost limit binds: the cheapest option costs {c_min:,.0f} {cur.code}"
        fix = (f"raise fedcloud:limits.maxCost to at least {c_min:,.0f}, or lower the cost "
               "model's rounds/setupHours")
    elif lat_binds:
        what = f"the latency limit binds: the nearest region's largest RTT is {l_min:.0f} ms"
        fix = (f"raise fedcloud:limits.maxLatencyMs to at least {l_min:.0f}, or allow regions "
               "nearer to the participants")
    else:
        j = closest[0]
        what = ("the limits bind together: every option within one limit breaks another")
        fix = (f"raise fedcloud:limits.maxCost to {cost_local[j]:,.0f} or "
               f"fedcloud:limits.maxLatencyMs to {space.latency_ms[j]:.0f} (the closest "
               "option needs both), or relax one limit further")
    return PlanError(f"{request.source}: no option meets {limits}; {what}. Closest: {names}.",
                     f"{fix}.")


def _evaluated_point(request: PlanRequest, placement: Placement, cat: Catalog,
                     market: str = ON_DEMAND) -> Point:
    """The objectives of one named placement (the baseline, on demand, or a pin)."""
    ev = evaluate_placement(request, placement, cat, market)
    return Point(Choice.of(ev.row, ev.market, ev.price_usd_per_hour), _objectives(
        ev.row, cat, request.currency.per_usd, ev.price_usd_per_hour, ev.cost_usd,
        ev.latency_ms, ev.mean_latency_ms, ev.job_hours, ev.egress_usd, ev.energy_kwh,
        ev.co2e_kg, ev.interruptions))


def _pin_market(request: PlanRequest, cat: Catalog) -> str:
    """A pin runs on spot when ``market`` is ``spot`` and its row has a spot price."""
    pin = request.pin
    assert pin is not None
    row = next(v for v in cat.vms if (v.cloud, v.region, v.instance_type)
               == (pin.cloud, pin.region, pin.instance_type))
    return SPOT if request.market == SPOT and spot_capable(row) else ON_DEMAND


def _on_demand_front(request: PlanRequest, method: str, cat: Catalog) -> tuple[Point, ...]:
    """The on-demand front of the same request (what spot/auto picks are compared with)."""
    if request.market == ON_DEMAND:
        return ()
    try:
        front, _ = _front(replace(request, market=ON_DEMAND, pin=None),
                          build_space(replace(request, market=ON_DEMAND), cat), method, cat)
    except PlanError:
        return ()  # nothing on demand meets the filters or limits: no comparison
    return front


def _front(request: PlanRequest, space: SearchSpace | None, method: str, cat: Catalog,
           ) -> tuple[tuple[Point, ...], int]:
    """The Pareto front of the search space (empty without a space) and how many evaluated."""
    if space is None:
        return (), 0
    found = search(space, method, request.seed, request.pop_size, request.generations)
    if found.front.size == 0 and request.pin is None:
        raise _infeasible(request, space)
    return tuple(_point(space, int(i), request.currency.per_usd, cat)
                 for i in found.front), found.evaluated


def _pick(front: tuple[Point, ...], w: tuple[float, ...]) -> Point:
    f = np.array([[p.objectives.cost_usd, p.objectives.latency_ms, p.objectives.co2e_kg]
                  for p in front], dtype=float)
    return front[pick(f, w)]


def _weighted(request: PlanRequest, front: tuple[Point, ...], baseline: Point | None,
              on_demand: tuple[Point, ...] = ()) -> tuple[WeightedChoice, ...]:
    """One pick of the front per weight vector, against the baseline and the on-demand pick."""
    if not front:
        return ()
    out = []
    for w in request.weights:
        p = _pick(front, w)
        cmp = Comparison.of(p.objectives, baseline.objectives) if baseline else None
        vs = OnDemandComparison.of(p.objectives, _pick(on_demand, w)) if on_demand else None
        out.append(WeightedChoice(weights=w, point=p, vs_baseline=cmp, vs_on_demand=vs))
    return tuple(out)


def plan(request: PlanRequest, method: str | None = None,
         cat: Catalog | None = None) -> PlanResult:
    """Choose the aggregator's cloud, region and VM size for ``request``.

    Args:
        request: The validated request.
        method: ``nsga2`` or ``exhaustive``; default: the stack's ``optimizer.method``.
        cat: The catalogue (default: the project's).

    Returns:
        The plan: ``choice`` is the pin if one is set, else the first weight's pick.

    Raises:
        PlanError: Nothing meets the filters or the limits (unless a pin is set), or an
            unknown method.
    """
    method = method or request.method
    if method not in METHODS:
        raise PlanError(f"unknown method '{method}'.", f"use one of: {', '.join(METHODS)}.")
    cat = cat or load_catalog()
    start = time.perf_counter()
    cur = request.currency
    space: SearchSpace | None
    try:
        space = build_space(request, cat)
    except PlanError:
        if request.pin is None:
            raise
        space = None  # a pin outside the filters still deploys; nothing to compare with
    front, evaluated = _front(request, space, method, cat)
    baseline = (_evaluated_point(request, request.baseline, cat)
                if request.baseline is not None else None)
    choices = _weighted(request, front, baseline, _on_demand_front(request, method, cat))
    deployed = (_evaluated_point(request, request.pin, cat, _pin_market(request, cat))
                if request.pin is not None else choices[0].point)
    return PlanResult(
        choice=deployed.choice,
        objectives=deployed.objectives,
        choices=choices,
        front=front,
        baseline=baseline,
        baseline_meets_limits=(baseline.objectives.meets(
            request.max_cost_usd, request.max_latency_ms, request.max_co2e_kg)
            if baseline is not None else None),
        method=method,
        seed=request.seed,
        elapsed_s=time.perf_counter() - start,
        pinned=request.pin is not None,
        target=request.target,
        currency=cur.code,
        per_usd=cur.per_usd,
        currency_as_of=cur.as_of,
        max_cost=request.max_cost,
        max_latency_ms=request.max_latency_ms,
        candidates=len(space) if space is not None else 0,
        feasible=int(space.feasible.sum()) if space is not None else 0,
        evaluated=evaluated,
        max_co2e_kg=request.max_co2e_kg,
        memory_need_gib=space.memory_need_gib if space is not None else 0.0,
        no_grid_factor=space.no_grid_factor if space is not None else (),
        market=request.market,
    )
