"""The optimizer's answer: the deployed choice, one choice per weight, the front, the baseline.

Plain frozen dataclasses holding Python floats (never numpy scalars); :meth:`PlanResult.to_dict`
gives the JSON shape of ``fedcloud plan --json`` (market fields only when the stack sets
``aggregator.market`` to spot or auto, so on-demand plans keep their shape).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from optimizer.catalog import PricedVm, VmRow

OBJECTIVES = ("cost_usd", "latency_ms", "co2e_kg")
ON_DEMAND = "onDemand"


@dataclass(frozen=True)
class Choice(PricedVm):
    """A (cloud, region, VM size) with its shape, market and price in that market."""

    market: str = ON_DEMAND

    @classmethod
    def of(cls, row: VmRow, market: str = ON_DEMAND, price: float | None = None) -> Choice:
        """Build from a catalogue row (``price``: the market's hourly price; default on demand)."""
        return cls(row.cloud, row.region, row.instance_type, int(row.vcpus),
                   float(row.memory_gib),
                   float(row.price_usd_per_hour if price is None else price), market)

    @property
    def label(self) -> str:
        """``cloud:region/instance_type``, with `` (spot)`` on the spot market."""
        spot = " (spot)" if self.market == "spot" else ""
        return f"{self.cloud}:{self.region}/{self.instance_type}{spot}"

    def to_dict(self, market: bool = False) -> dict[str, Any]:
        """Return the JSON form (with ``market`` if asked)."""
        out: dict[str, Any] = {
            "cloud": self.cloud, "region": self.region, "instance_type": self.instance_type,
            "vcpus": self.vcpus, "memory_gib": self.memory_gib,
            "price_usd_per_hour": self.price_usd_per_hour,
        }
        if market:
            out["market"] = self.market
        return out


@dataclass(frozen=True)
class Objectives:
    """A placement's objectives and the estimates behind them.

    Attributes:
        cost_usd: Job cost in USD (VM hours + egress).
        cost_local: The same in the stack's currency.
        latency_ms: Largest RTT to any participant (the latency objective).
        mean_latency_ms: Mean RTT to the participants (reported, not optimised).
        job_hours: Estimated billed hours (the training time estimate plus set-up).
        egress_usd: The egress part of ``cost_usd``.
        co2e_kg: The job's emissions, kg CO2e (``None``: the region has no grid factor).
        energy_kwh: The job's IT energy before PUE, kWh.
        monthly_cost_usd: The VM alone, always on, for a month (730 h; the reference study's
            basis).
        grid_kg_per_kwh: The region's grid factor used (``None``: none known).
        grid_basis: ``published``, the substitution made, or ``unknown``.
        interruptions: Expected spot interruptions over the job (0 on demand); their resume
            overhead and lost rounds are in ``job_hours``, ``cost_usd`` and ``co2e_kg``.
    """

    cost_usd: float
    cost_local: float
    latency_ms: float
    mean_latency_ms: float
    job_hours: float
    egress_usd: float
    co2e_kg: float | None = None
    energy_kwh: float = 0.0
    monthly_cost_usd: float = 0.0
    grid_kg_per_kwh: float | None = None
    grid_basis: str = "unknown"
    interruptions: float = 0.0

    def meets(self, max_cost_usd: float, max_latency_ms: float,
              max_co2e_kg: float | None = None) -> bool:
        """Whether every limit holds (an unknown emission fails an emissions limit)."""
        co2_ok = max_co2e_kg is None or (self.co2e_kg is not None
                                         and self.co2e_kg <= max_co2e_kg)
        return self.cost_usd <= max_cost_usd and self.latency_ms <= max_latency_ms and co2_ok

    def to_dict(self, market: bool = False) -> dict[str, Any]:
        """Return the JSON form (rounded for reading; costs to 6 significant places)."""
        out: dict[str, Any] = {
            "cost_usd": round(self.cost_usd, 6),
            "cost_local": round(self.cost_local, 4),
            "latency_ms": round(self.latency_ms, 3),
            "mean_latency_ms": round(self.mean_latency_ms, 3),
            "job_hours": round(self.job_hours, 4),
            "egress_usd": round(self.egress_usd, 6),
            "co2e_kg": None if self.co2e_kg is None else round(self.co2e_kg, 6),
            "energy_kwh": round(self.energy_kwh, 6),
            "monthly_cost_usd": round(self.monthly_cost_usd, 4),
            "grid_kg_per_kwh": self.grid_kg_per_kwh,
            "grid_basis": self.grid_basis,
        }
        if market:
            out["expected_interruptions"] = round(self.interruptions, 6)
        return out


@dataclass(frozen=True)
class Point:
    """A choice with its objectives (a point of the front, the baseline, a pin)."""

    choice: Choice
    objectives: Objectives

    def flat(self, market: bool = False) -> dict[str, Any]:
        """Return choice and objective fields in one mapping (the ``front`` entries)."""
        return {**self.choice.to_dict(market), **self.objectives.to_dict(market)}


@dataclass(frozen=True)
class Comparison:
    """A choice against the baseline (negative changes are reductions).

    Attributes:
        cost_cut_pct: ``(baseline - choice) / baseline`` job cost (VM hours + egress), percent
            (positive = cheaper).
        monthly_cost_cut_pct: The same on the always-on monthly VM price (no egress): the
            reference study's basis.
        latency_change_ms: Change of the largest RTT, ms.
        latency_change_pct: The same in percent of the baseline's.
        job_hours_change_pct: Change of the estimated job time, percent.
        co2e_change_pct: Change of the job's emissions, percent (``None`` if either is unknown).
    """

    cost_cut_pct: float
    monthly_cost_cut_pct: float
    latency_change_ms: float
    latency_change_pct: float
    job_hours_change_pct: float
    co2e_change_pct: float | None

    @classmethod
    def of(cls, choice: Objectives, baseline: Objectives) -> Comparison:
        """Compare ``choice`` with ``baseline``."""
        def pct(new: float, old: float) -> float:
            return 100.0 * (new - old) / old if old else 0.0

        co2 = (pct(choice.co2e_kg, baseline.co2e_kg)
               if choice.co2e_kg is not None and baseline.co2e_kg is not None else None)
        return cls(
            cost_cut_pct=-pct(choice.cost_usd, baseline.cost_usd),
            monthly_cost_cut_pct=-pct(choice.monthly_cost_usd, baseline.monthly_cost_usd),
            latency_change_ms=choice.latency_ms - baseline.latency_ms,
            latency_change_pct=pct(choice.latency_ms, baseline.latency_ms),
            job_hours_change_pct=pct(choice.job_hours, baseline.job_hours),
            co2e_change_pct=co2,
        )

    def to_dict(self) -> dict[str, float | None]:
        """Return the JSON form."""
        return {k: None if v is None else round(v, 2) for k, v in vars(self).items()}


@dataclass(frozen=True)
class OnDemandComparison:
    """A spot or auto pick against the best on-demand pick at the same weights.

    Attributes:
        cost_cut_pct: ``(on demand - pick) / on demand`` expected job cost, percent.
        job_hours_change_pct: Change of the expected job time (interruptions included), percent.
        on_demand: The on-demand pick.
    """

    cost_cut_pct: float
    job_hours_change_pct: float
    on_demand: Point

    @classmethod
    def of(cls, pick: Objectives, on_demand: Point) -> OnDemandComparison:
        """Compare ``pick`` with ``on_demand``."""
        base = on_demand.objectives
        cut = 100.0 * (base.cost_usd - pick.cost_usd) / base.cost_usd if base.cost_usd else 0.0
        hours = (100.0 * (pick.job_hours - base.job_hours) / base.job_hours
                 if base.job_hours else 0.0)
        return cls(cost_cut_pct=cut, job_hours_change_pct=hours, on_demand=on_demand)

    def to_dict(self) -> dict[str, Any]:
        """Return the JSON form."""
        return {"cost_cut_pct": round(self.cost_cut_pct, 2),
                "job_hours_change_pct": round(self.job_hours_change_pct, 2),
                "on_demand": {**self.on_demand.choice.to_dict(True),
                              "objectives": self.on_demand.objectives.to_dict(True)}}


@dataclass(frozen=True)
class WeightedChoice:
    """The pick of one weight vector (cost, latency[, emissions])."""

    weights: tuple[float, ...]
    point: Point
    vs_baseline: Comparison | None
    vs_on_demand: OnDemandComparison | None = None

    def to_dict(self, market: bool = False) -> dict[str, Any]:
        """Return the JSON form (``market``: with the market fields and ``vs_on_demand``)."""
        out = {
            "weights": [_num(w) for w in self.weights],
            "choice": self.point.choice.to_dict(market),
            "objectives": self.point.objectives.to_dict(market),
            "vs_baseline": self.vs_baseline.to_dict() if self.vs_baseline else None,
        }
        if market:
            out["vs_on_demand"] = self.vs_on_demand.to_dict() if self.vs_on_demand else None
        return out


@dataclass(frozen=True)
class PlanResult:
    """The optimizer's answer for one request.

    Attributes:
        choice: The deployed option: the pin if ``aggregator.pin`` is set, else the first
            weight's pick.
        objectives: The deployed option's objectives.
        choices: One pick per weight, in the stack's order.
        front: The feasible Pareto front, cheapest first.
        baseline: The stack's "before optimization" placement, if set.
        baseline_meets_limits: Whether the baseline meets the limits (``None`` without one).
        method: ``nsga2`` or ``exhaustive``.
        seed: The seed (NSGA-II; recorded for both).
        elapsed_s: Wall time of the search (filtering, models and search), seconds.
        pinned: Whether ``choice`` is a pin rather than a pick.
        target: ``aggregator.target``.
        currency: Currency code of ``cost_local``.
        per_usd: Units of that currency per USD.
        currency_as_of: Date of the rate, if the stack gives one.
        max_cost: The cost limit, stack currency.
        max_latency_ms: The latency limit.
        max_co2e_kg: The emissions limit, kg CO2e (``None``: none).
        memory_need_gib: The job's memory need on the aggregator (the VM filter's minimum is
            the larger of it and ``aggregator.minMemoryGib``).
        no_grid_factor: Regions left out of the search for want of a grid factor.
        candidates: Options after filtering (the search space's size).
        feasible: Options meeting both limits.
        evaluated: Distinct options the method evaluated.
        market: ``aggregator.market`` (``onDemand``, ``spot`` or ``auto``).
    """

    choice: Choice
    objectives: Objectives
    choices: tuple[WeightedChoice, ...]
    front: tuple[Point, ...]
    baseline: Point | None
    baseline_meets_limits: bool | None
    method: str
    seed: int
    elapsed_s: float
    pinned: bool
    target: str
    currency: str
    per_usd: float
    currency_as_of: str | None
    max_cost: float
    max_latency_ms: float
    candidates: int
    feasible: int
    evaluated: int
    max_co2e_kg: float | None = None
    memory_need_gib: float = 0.0
    no_grid_factor: tuple[str, ...] = ()
    market: str = ON_DEMAND

    @property
    def cost_cut_pct(self) -> list[float | None]:
        """Per weight, the cost cut against the baseline in percent (``None`` without one)."""
        return [c.vs_baseline.cost_cut_pct if c.vs_baseline else None for c in self.choices]

    @property
    def latency_change_pct(self) -> list[float | None]:
        """Per weight, the latency change against the baseline in percent."""
        return [c.vs_baseline.latency_change_pct if c.vs_baseline else None
                for c in self.choices]

    def to_dict(self) -> dict[str, Any]:
        """Return the JSON shape of ``fedcloud plan --json``."""
        m = self.market != ON_DEMAND
        baseline = None
        if self.baseline is not None:
            baseline = {**self.baseline.choice.to_dict(m),
                        "objectives": self.baseline.objectives.to_dict(m),
                        "meets_limits": self.baseline_meets_limits}
        out = {
            "choice": self.choice.to_dict(m),
            "objectives": self.objectives.to_dict(m),
            "front": [p.flat(m) for p in self.front],
            "baseline": baseline,
            "method": self.method,
            "seed": self.seed,
            "elapsed_s": round(self.elapsed_s, 4),
            "choices": [c.to_dict(m) for c in self.choices],
            "pinned": self.pinned,
            "target": self.target,
            "currency": {"code": self.currency, "per_usd": self.per_usd,
                         "as_of": self.currency_as_of},
            "limits": {"max_cost": self.max_cost, "max_latency_ms": self.max_latency_ms,
                       "max_co2e_kg": self.max_co2e_kg},
            "search": {"candidates": self.candidates, "feasible": self.feasible,
                       "evaluated": self.evaluated, "objectives": list(OBJECTIVES),
                       "memory_need_gib": round(self.memory_need_gib, 3),
                       "no_grid_factor": list(self.no_grid_factor)},
        }
        if m:
            out["market"] = self.market
        return out


def _num(x: float) -> float | int:
    return int(x) if float(x).is_integer() else float(x)


def _camel(key: str) -> str:
    head, *rest = key.split("_")
    return head + "".join(part[:1].upper() + part[1:] for part in rest)


def camelize(value: Any) -> Any:
    """Return ``value`` with every mapping key in camelCase (``cost_usd`` -> ``costUsd``)."""
    if isinstance(value, Mapping):
        return {_camel(str(k)): camelize(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [camelize(v) for v in value]
    return value


def plan_output(result: Any) -> dict[str, Any]:
    """Map an ``optimizer.PlanResult`` to the ``plan`` stack output (camelCase, JSON-able).

    Top level: the deployed option's ``costUsd``, ``costLocal``, ``latencyMs``,
    ``meanLatencyMs``, the ``weights`` that picked it, the ``baseline`` and the ``cut`` against
    it (``costCutPct`` > 0 is cheaper); then the per-weight ``choices`` and the search summary.
    The wall time and the whole front are left out so that the output is deterministic and
    small (``fedcloud plan --json`` prints them).
    """
    full = result.to_dict()
    obj = result.objectives
    cut = None
    if result.baseline is not None:
        cut = Comparison.of(obj, result.baseline.objectives).to_dict()
    weights = None if result.pinned or not result.choices else list(full["choices"][0]["weights"])
    out = {
        "costUsd": full["objectives"]["cost_usd"],
        "costLocal": full["objectives"]["cost_local"],
        "currency": full["currency"]["code"],
        "latencyMs": full["objectives"]["latency_ms"],
        "co2eKg": full["objectives"]["co2e_kg"],
        "meanLatencyMs": full["objectives"]["mean_latency_ms"],
        "jobHours": full["objectives"]["job_hours"],
        "weights": weights,
        "choice": full["choice"],
        "baseline": full["baseline"],
        "cut": cut,
        "choices": full["choices"],
        "pinned": full["pinned"],
        "method": full["method"],
        "seed": full["seed"],
        "limits": full["limits"],
        "search": full["search"],
    }
    if "market" in full:  # spot or auto stacks only: on-demand outputs keep their shape
        out["market"] = full["market"]
    return dict(camelize(out))
