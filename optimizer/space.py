"""The search space: the catalogue filtered for one request, with every objective precomputed.

Filtering comes first (allowed clouds and regions, minimum vCPU and memory); the survivors are
the options both methods search. For each option the job cost (USD), the largest and the mean
RTT to the participants and the job hours are computed once, as numpy arrays, so that NSGA-II
evaluates a whole population by indexing and the exhaustive method by a single pass.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from fedcloud.core.errors import PlanError
from optimizer import cost, latency
from optimizer.catalog import Catalog, VmRow, load_catalog
from optimizer.request import Placement, PlanRequest


@dataclass(frozen=True)
class SearchSpace:
    """Filtered options (catalogue order: cloud, region, instance type) and their objectives.

    Attributes:
        rows: The options.
        region_keys: The distinct ``(cloud, region)`` of the options.
        region_of: Option index -> index into ``region_keys``.
        price_usd_per_hour: On-demand price of each option.
        cost_usd: Job cost of each option.
        latency_ms: Largest RTT from the option's region to any participant.
        mean_latency_ms: Mean RTT to the participants.
        job_hours: Estimated billed hours.
        feasible: Whether the option meets both limits.
        canonical: For each option, the first option with exactly the same (cost, latency):
            options that tie on both objectives are one point of the objective space.
        rtt_ms: ``[participants, regions]`` RTT matrix.
        rtt_sources: Source of each RTT cell (override, measured, same-region, model).
        max_cost_usd: The cost limit in USD.
        max_latency_ms: The latency limit.
    """

    rows: tuple[VmRow, ...]
    region_keys: tuple[tuple[str, str], ...]
    region_of: np.ndarray
    price_usd_per_hour: np.ndarray
    cost_usd: np.ndarray
    latency_ms: np.ndarray
    mean_latency_ms: np.ndarray
    job_hours: np.ndarray
    feasible: np.ndarray
    canonical: np.ndarray
    rtt_ms: np.ndarray
    rtt_sources: tuple[tuple[str, ...], ...]
    max_cost_usd: float
    max_latency_ms: float

    @property
    def objectives(self) -> np.ndarray:
        """``[options, 2]`` array of (cost_usd, latency_ms), both minimised."""
        return np.column_stack([self.cost_usd, self.latency_ms])

    def __len__(self) -> int:
        return len(self.rows)


def _filter(request: PlanRequest, cat: Catalog) -> list[VmRow]:
    allowed = set(request.regions)
    in_clouds = [v for v in cat.vms if v.cloud in request.clouds]
    in_regions = [v for v in in_clouds if not allowed or (v.cloud, v.region) in allowed]
    out = [v for v in in_regions
           if v.vcpus >= request.min_vcpus and v.memory_gib >= request.min_memory_gib]
    if out:
        return out
    if not in_regions:
        raise PlanError(f"{request.source}: no priced VM in the allowed clouds "
                        f"{list(request.clouds)} and regions.",
                        "widen fedcloud:clouds or fedcloud:regions.")
    biggest = sorted(in_regions, key=lambda v: (-v.vcpus, -v.memory_gib, v.price_usd_per_hour))
    best = ", ".join(f"{v.cloud}:{v.region}/{v.instance_type} ({v.vcpus} vCPU, "
                     f"{v.memory_gib:g} GiB)" for v in biggest[:3])
    raise PlanError(
        f"{request.source}: no VM in the allowed clouds/regions has at least "
        f"{request.min_vcpus:g} vCPU and {request.min_memory_gib:g} GiB (largest: {best}).",
        "lower fedcloud:aggregator.minVcpus / minMemoryGib, or allow more regions.")


def _canonical(f: np.ndarray) -> np.ndarray:
    """Map each row of ``f`` to the first row with identical values."""
    _, first, inverse = np.unique(f, axis=0, return_index=True, return_inverse=True)
    return np.asarray(first[inverse.ravel()], dtype=np.int64)


def build_space(request: PlanRequest, cat: Catalog | None = None) -> SearchSpace:
    """Filter the catalogue for ``request`` and precompute every option's objectives.

    Raises:
        PlanError: Nothing survives the filters (says which filter and what exists).
    """
    cat = cat or load_catalog()
    rows = _filter(request, cat)
    region_keys = tuple(dict.fromkeys((v.cloud, v.region) for v in rows))
    index = {k: i for i, k in enumerate(region_keys)}
    region_of = np.array([index[(v.cloud, v.region)] for v in rows], dtype=np.int64)
    rtt, sources = latency.rtt_matrix(request.participants, list(region_keys), cat)
    cm = request.cost_model
    hours_r = cost.job_hours(rtt, cm)
    egress_r = np.array([cost.egress_usd(c, len(request.participants), cm)
                         for c, _ in region_keys])
    price = np.array([v.price_usd_per_hour for v in rows])
    hours = hours_r[region_of]
    cost_usd = cost.job_cost_usd(price, hours, egress_r[region_of])
    lat = rtt.max(axis=0)[region_of]
    feasible = (cost_usd <= request.max_cost_usd) & (lat <= request.max_latency_ms)
    return SearchSpace(
        rows=tuple(rows),
        region_keys=region_keys,
        region_of=region_of,
        price_usd_per_hour=price,
        cost_usd=cost_usd,
        latency_ms=lat,
        mean_latency_ms=rtt.mean(axis=0)[region_of],
        job_hours=hours,
        feasible=feasible,
        canonical=_canonical(np.column_stack([cost_usd, lat])),
        rtt_ms=rtt,
        rtt_sources=tuple(tuple(s) for s in sources),
        max_cost_usd=request.max_cost_usd,
        max_latency_ms=request.max_latency_ms,
    )


@dataclass(frozen=True)
class Evaluated:
    """The objectives of one placement (also outside the search space: baseline, pin)."""

    row: VmRow
    cost_usd: float
    latency_ms: float
    mean_latency_ms: float
    job_hours: float
    egress_usd: float


def evaluate_placement(request: PlanRequest, placement: Placement,
                       cat: Catalog | None = None) -> Evaluated:
    """Compute the objectives of a named placement with the same models as the search."""
    cat = cat or load_catalog()
    row = next(v for v in cat.vms if (v.cloud, v.region, v.instance_type)
               == (placement.cloud, placement.region, placement.instance_type))
    rtt, _ = latency.rtt_matrix(request.participants, [(row.cloud, row.region)], cat)
    hours = float(cost.job_hours(rtt, request.cost_model)[0])
    egress = cost.egress_usd(row.cloud, len(request.participants), request.cost_model)
    return Evaluated(
        row=row,
        cost_usd=float(row.price_usd_per_hour * hours + egress),
        latency_ms=float(rtt[:, 0].max()),
        mean_latency_ms=float(rtt[:, 0].mean()),
        job_hours=hours,
        egress_usd=float(egress),
    )
