"""The search space: the catalogue filtered for one request, with every objective precomputed.

Filtering comes first (allowed clouds and regions, minimum vCPU, the job's memory need, a known
grid factor); the survivors, in each market ``aggregator.market`` allows (on demand, spot where
priced on AWS/GCP), are the options both methods search. Each option's job cost,
largest and mean RTT, job hours and emissions are computed once, as numpy arrays, so NSGA-II
evaluates a population by indexing and the exhaustive method in one pass.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from fedcloud.core.errors import PlanError
from optimizer import cost, latency
from optimizer.catalog import Catalog, VmRow, load_catalog
from optimizer.request import AUTO, ON_DEMAND, SPOT, SPOT_CLOUDS, Placement, PlanRequest


@dataclass(frozen=True)
class SearchSpace:
    """Filtered options (catalogue order: cloud, region, instance type) and their objectives.

    Attributes:
        rows: The options' VM rows (a row appears twice under ``auto``: on demand and spot).
        markets: Each option's market, ``onDemand`` or ``spot``.
        region_keys: The distinct ``(cloud, region)`` of the options.
        region_of: Option index -> index into ``region_keys``.
        price_usd_per_hour: Hourly price of each option in its market.
        cost_usd: Job cost of each option.
        latency_ms: Largest RTT from the option's region to any participant.
        mean_latency_ms: Mean RTT to the participants.
        job_hours: Estimated billed hours.
        egress_usd: The egress part of the job cost.
        interruptions: Expected spot interruptions (0 on demand).
        energy_kwh: The job's IT energy (before PUE).
        co2e_kg: The job's emissions (the third objective).
        feasible: Whether the option meets every limit.
        canonical: For each option, the first option with exactly the same objectives.
        rtt_ms: ``[participants, regions]`` RTT matrix.
        rtt_sources: Source of each RTT cell (override, measured, same-region, model).
        max_cost_usd: The cost limit in USD.
        max_latency_ms: The latency limit.
        max_co2e_kg: The emissions limit (``inf`` without one).
        memory_need_gib: The job's memory need (the filter is the larger of it and the floor).
        no_grid_factor: ``cloud:region`` left out because no grid factor is known.
    """

    rows: tuple[VmRow, ...]
    markets: tuple[str, ...]
    region_keys: tuple[tuple[str, str], ...]
    region_of: np.ndarray
    price_usd_per_hour: np.ndarray
    cost_usd: np.ndarray
    latency_ms: np.ndarray
    mean_latency_ms: np.ndarray
    job_hours: np.ndarray
    egress_usd: np.ndarray
    interruptions: np.ndarray
    energy_kwh: np.ndarray
    co2e_kg: np.ndarray
    feasible: np.ndarray
    canonical: np.ndarray
    rtt_ms: np.ndarray
    rtt_sources: tuple[tuple[str, ...], ...]
    max_cost_usd: float
    max_latency_ms: float
    max_co2e_kg: float
    memory_need_gib: float
    no_grid_factor: tuple[str, ...]

    @property
    def objectives(self) -> np.ndarray:
        """``[options, 3]`` array of (cost_usd, latency_ms, co2e_kg), all minimised."""
        return np.column_stack([self.cost_usd, self.latency_ms, self.co2e_kg])

    def __len__(self) -> int:
        return len(self.rows)


def min_memory_gib(request: PlanRequest, cat: Catalog) -> tuple[float, float]:
    """``(effective minimum, the job's own need)``: the floor or the job's need if larger."""
    need = cost.memory_need_gib(len(request.participants), request.cost_model, cat.aggregator)
    return max(request.min_memory_gib, need), need


def _filter(request: PlanRequest, cat: Catalog) -> tuple[list[VmRow], tuple[str, ...]]:
    allowed = set(request.regions)
    in_clouds = [v for v in cat.vms if v.cloud in request.clouds]
    in_regions = [v for v in in_clouds if not allowed or (v.cloud, v.region) in allowed]
    min_mem, need = min_memory_gib(request, cat)
    sized = [v for v in in_regions if v.vcpus >= request.min_vcpus and v.memory_gib >= min_mem]
    no_factor = tuple(sorted({f"{v.cloud}:{v.region}" for v in sized
                              if cat.grid[(v.cloud, v.region)].kg_per_kwh is None}))
    out = [v for v in sized if cat.grid[(v.cloud, v.region)].kg_per_kwh is not None]
    if out:
        return out, no_factor
    if not in_regions:
        raise PlanError(f"{request.source}: no priced VM in the allowed clouds "
                        f"{list(request.clouds)} and regions.",
                        "widen fedcloud:clouds or fedcloud:regions.")
    if sized:
        raise PlanError(f"{request.source}: every allowed region lacks a grid emissions factor "
                        f"({', '.join(no_factor[:5])}).",
                        "allow regions with a factor (optimizer/catalog/carbon_grid.csv).")
    biggest = sorted(in_regions, key=lambda v: (-v.vcpus, -v.memory_gib, v.price_usd_per_hour))
    best = ", ".join(f"{v.cloud}:{v.region}/{v.instance_type} ({v.vcpus} vCPU, "
                     f"{v.memory_gib:g} GiB)" for v in biggest[:3])
    why = (f" (the job needs {need:.1f} GiB: {len(request.participants)} participants x "
           f"{request.cost_model.model_mb:g} MB)" if need > request.min_memory_gib else "")
    raise PlanError(
        f"{request.source}: no VM in the allowed clouds/regions has at least "
        f"{request.min_vcpus:g} vCPU and {min_mem:.1f} GiB{why} (largest: {best}).",
        "lower fedcloud:aggregator.minVcpus / minMemoryGib, the model size or the "
        "participants, or allow more regions.")


def _canonical(f: np.ndarray) -> np.ndarray:
    """Map each row of ``f`` to the first row with identical values."""
    _, first, inverse = np.unique(f, axis=0, return_index=True, return_inverse=True)
    return np.asarray(first[inverse.ravel()], dtype=np.int64)


def spot_capable(row: VmRow) -> bool:
    """Whether ``row`` can run on spot here: a spot price on a cloud the program deploys spot on."""
    return row.cloud in SPOT_CLOUDS and row.spot_price_usd_per_hour is not None


def market_options(rows: list[VmRow], market: str) -> tuple[list[VmRow], list[str]]:
    """Expand filtered rows into ``(row, market)`` options for ``aggregator.market``."""
    out: list[tuple[VmRow, str]] = []
    for v in rows:
        if market in (ON_DEMAND, AUTO):
            out.append((v, ON_DEMAND))
        if market in (SPOT, AUTO) and spot_capable(v):
            out.append((v, SPOT))
    return [v for v, _ in out], [m for _, m in out]


def market_price(row: VmRow, market: str) -> float:
    """The row's hourly price in ``market``."""
    if market == SPOT:
        if row.spot_price_usd_per_hour is None:
            raise PlanError(f"{row.cloud}:{row.region}/{row.instance_type} has no spot price.",
                            "set fedcloud:aggregator.market to onDemand or auto.")
        return float(row.spot_price_usd_per_hour)
    return float(row.price_usd_per_hour)


@dataclass(frozen=True)
class Estimates:
    """Every model output for a list of options (the search space's and a placement's)."""

    hours: np.ndarray
    egress_usd: np.ndarray
    cost_usd: np.ndarray
    energy_kwh: np.ndarray
    co2e_kg: np.ndarray  # NaN where the region has no grid factor
    interruptions: np.ndarray
    price_usd_per_hour: np.ndarray


def estimate(request: PlanRequest, rows: list[VmRow], markets: list[str], rtt: np.ndarray,
             region_of: np.ndarray, cat: Catalog) -> Estimates:
    """Run the time, cost and emissions models on ``rows`` (RTT columns by ``region_of``).

    On spot, ``rate x job hours`` expected interruptions each add the resume overhead and the
    lost round to the hours and one round's downloads to the egress (optimizer/README.md).
    """
    cm, n = request.cost_model, len(request.participants)
    power = [cat.power[(v.cloud, v.instance_type)] for v in rows]
    grid = [cat.grid[(v.cloud, v.region)] for v in rows]
    nic = np.array([p.network_gbps for p in power])
    per_mb = cat.aggregator["aggregate_s_per_mb"]
    hours = cost.job_hours(rtt, region_of, nic, cm, per_mb)
    egress = np.array([cost.egress_usd(v.cloud, n, cm) for v in rows])
    spot = np.array([m == SPOT for m in markets], dtype=bool)
    lost = cost.expected_interruptions(hours, spot, cm)
    if spot.any():
        hours = hours + cost.interruption_hours(
            lost, cost.round_seconds(rtt, region_of, nic, cm, per_mb), cm)
        round_gb = cost.round_bytes(n, cm)[0] / cost.BYTES_PER_GB
        egress = egress + lost * round_gb * np.array([cm.egress_usd_per_gb[v.cloud]
                                                      for v in rows])
    price = np.array([market_price(v, m) for v, m in zip(rows, markets, strict=True)])
    energy = cost.energy_kwh(np.array([v.vcpus for v in rows], dtype=float),
                             np.array([v.memory_gib for v in rows]), hours,
                             np.array([p.min_watts_per_vcpu for p in power]),
                             np.array([p.max_watts_per_vcpu for p in power]), n, cm, lost)
    factor = np.array([np.nan if g.kg_per_kwh is None else g.kg_per_kwh for g in grid])
    co2 = cost.co2e_kg(energy, np.array([g.pue for g in grid]), factor)
    return Estimates(hours, egress, cost.job_cost_usd(price, hours, egress), energy, co2, lost,
                     price)


def build_space(request: PlanRequest, cat: Catalog | None = None) -> SearchSpace:
    """Filter the catalogue for ``request`` and precompute every option's objectives.

    Raises:
        PlanError: Nothing survives the filters (says which filter and what exists).
    """
    cat = cat or load_catalog()
    rows, no_factor = _filter(request, cat)
    rows, markets = market_options(rows, request.market)
    if not rows:
        raise PlanError(f"{request.source}: no VM that meets the filters has a spot price on "
                        f"{' or '.join(SPOT_CLOUDS)} in the allowed clouds/regions.",
                        "set fedcloud:aggregator.market to auto or onDemand, or allow aws or "
                        "gcp regions.")
    region_keys = tuple(dict.fromkeys((v.cloud, v.region) for v in rows))
    index = {k: i for i, k in enumerate(region_keys)}
    region_of = np.array([index[(v.cloud, v.region)] for v in rows], dtype=np.int64)
    rtt, sources = latency.rtt_matrix(request.participants, list(region_keys), cat)
    est = estimate(request, rows, markets, rtt, region_of, cat)
    lat = rtt.max(axis=0)[region_of]
    max_co2 = request.max_co2e_kg if request.max_co2e_kg is not None else np.inf
    feasible = ((est.cost_usd <= request.max_cost_usd) & (lat <= request.max_latency_ms)
                & (est.co2e_kg <= max_co2))
    return SearchSpace(
        rows=tuple(rows),
        markets=tuple(markets),
        region_keys=region_keys,
        region_of=region_of,
        price_usd_per_hour=est.price_usd_per_hour,
        cost_usd=est.cost_usd,
        latency_ms=lat,
        mean_latency_ms=rtt.mean(axis=0)[region_of],
        job_hours=est.hours,
        egress_usd=est.egress_usd,
        interruptions=est.interruptions,
        energy_kwh=est.energy_kwh,
        co2e_kg=est.co2e_kg,
        feasible=feasible,
        canonical=_canonical(np.column_stack([est.cost_usd, lat, est.co2e_kg])),
        rtt_ms=rtt,
        rtt_sources=tuple(tuple(s) for s in sources),
        max_cost_usd=request.max_cost_usd,
        max_latency_ms=request.max_latency_ms,
        max_co2e_kg=float(max_co2),
        memory_need_gib=min_memory_gib(request, cat)[1],
        no_grid_factor=no_factor,
    )


@dataclass(frozen=True)
class Evaluated:
    """The objectives of one placement (also outside the search space: baseline, pin)."""

    row: VmRow
    market: str
    price_usd_per_hour: float
    interruptions: float
    cost_usd: float
    latency_ms: float
    mean_latency_ms: float
    job_hours: float
    egress_usd: float
    energy_kwh: float
    co2e_kg: float | None


def evaluate_placement(request: PlanRequest, placement: Placement, cat: Catalog | None = None,
                       market: str = ON_DEMAND) -> Evaluated:
    """Compute the objectives of a named placement in ``market`` with the search's models."""
    cat = cat or load_catalog()
    row = next(v for v in cat.vms if (v.cloud, v.region, v.instance_type)
               == (placement.cloud, placement.region, placement.instance_type))
    rtt, _ = latency.rtt_matrix(request.participants, [(row.cloud, row.region)], cat)
    est = estimate(request, [row], [market], rtt, np.zeros(1, dtype=np.int64), cat)
    co2 = float(est.co2e_kg[0])
    return Evaluated(
        row=row,
        market=market,
        price_usd_per_hour=float(est.price_usd_per_hour[0]),
        interruptions=float(est.interruptions[0]),
        cost_usd=float(est.cost_usd[0]),
        latency_ms=float(rtt[:, 0].max()),
        mean_latency_ms=float(rtt[:, 0].mean()),
        job_hours=float(est.hours[0]),
        egress_usd=float(est.egress_usd[0]),
        energy_kwh=float(est.energy_kwh[0]),
        co2e_kg=None if np.isnan(co2) else co2,
    )
