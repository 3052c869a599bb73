"""The optimizer's sections of a stack, typed: clouds, regions, limits, weights, costs, search.

Parsed here once for every composition; cloud, region and instance-type names are checked
against the catalogue by the optimizer (``optimizer.request.PlanRequest.build``), which owns it.
"""

from __future__ import annotations

import datetime as dt
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from fedcloud.core.config import ConfigView
from fedcloud.core.files import short
from fl.app.protocol import Traffic
from fl.app.protocol import traffic as traffic_of

CLOUDS: tuple[str, ...] = ("aws", "gcp", "azure")
TARGETS = ("auto", *CLOUDS, "local")
METHODS = ("nsga2", "exhaustive")
ON_DEMAND, SPOT, AUTO = "onDemand", "spot", "auto"
MARKETS = (ON_DEMAND, SPOT, AUTO)
AGGREGATOR_KEYS = ("target", "minVcpus", "minMemoryGib", "pin", "sshPublicKeyPath", "diskGb",
                   "image", "market")
COST_MODEL_KEYS = ("rounds", "modelMb", "bandwidthMbps", "roundTrainS", "rttsPerRound",
                   "setupHours", "egressUsdPerGb", "cpuUtilization", "spotInterruptionsPerHour",
                   "resumeOverheadS")
# Defaults of CostModel built in code (tests, benchmarks); a stack's come from Pulumi.yaml, which
# states the same figures: 0.05 / 730 h, the upper edge of AWS Spot Instance Advisor's lowest
# frequency-of-interruption band (<5% a month), and the median benchmarks/resume.py measured.
SPOT_INTERRUPTIONS_PER_HOUR = 0.05 / 730
RESUME_OVERHEAD_S = 40.0
_CURRENCY_CODE = re.compile(r"^[A-Z]{3}$")


@dataclass(frozen=True)
class Placement:
    """A (cloud, region, instance type): a pin, the baseline, or the optimizer's choice."""

    cloud: str
    region: str
    instance_type: str

    @property
    def label(self) -> str:
        """``cloud:region/instance_type``."""
        return f"{self.cloud}:{self.region}/{self.instance_type}"


@dataclass(frozen=True)
class Currency:
    """The stack's reporting currency: ``per_usd`` units of it per US dollar, as of a date."""

    code: str
    per_usd: float
    as_of: str | None


@dataclass(frozen=True)
class CostModel:
    """Assumptions of the job time and cost model (optimizer/README.md, "Cost model").

    Attributes:
        rounds: Federated rounds of the job.
        model_mb: Model size in MB (10^6 bytes) as sent over the wire.
        bandwidth_mbps: Each participant's link, Mbit/s.
        round_train_s: Local training time per round on a participant, seconds.
        rtts_per_round: Round trips on a round's critical path.
        setup_hours: Billed hours that do not depend on the region.
        egress_usd_per_gb: Each cloud's internet egress price, USD per GB (10^9 bytes).
        traffic: The model copies a run moves, as the app declares them for the stack's
            ``training.wireDtype`` (``fl/app/protocol.py``).
        cpu_utilization: Average CPU utilisation of the aggregator VM, 0-1 (emissions model;
            the Cloud Carbon Footprint default is 0.5).
        spot_interruptions_per_hour: Expected spot interruptions per hour of the job.
        resume_overhead_s: Extra wall time per interruption (restart and resume), seconds,
            on top of the round lost.
    """

    rounds: int
    model_mb: float
    bandwidth_mbps: float
    round_train_s: float
    rtts_per_round: float
    setup_hours: float
    egress_usd_per_gb: Mapping[str, float]
    traffic: Traffic = field(default_factory=traffic_of)
    cpu_utilization: float = 0.5
    spot_interruptions_per_hour: float = SPOT_INTERRUPTIONS_PER_HOUR
    resume_overhead_s: float = RESUME_OVERHEAD_S


@dataclass(frozen=True)
class PlanSettings:
    """What the user asks the optimizer, typed; names not yet checked against the catalogue.

    Attributes:
        source: Where the config came from (for messages).
        clouds: ``fedcloud:clouds`` in order, without repeats.
        regions: ``fedcloud:regions`` as ``(cloud, region)`` pairs.
        target: ``aggregator.target``: ``auto``, a cloud, or ``local``.
        min_vcpus: Minimum aggregator vCPUs.
        min_memory_gib: Minimum aggregator memory, GiB.
        pin: ``aggregator.pin``, if set.
        baseline: ``fedcloud:baseline``, if set.
        max_cost: The job's cost limit in the stack currency.
        max_latency_ms: Limit on the largest RTT from the aggregator to any participant.
        weights: ``(cost, latency)`` or ``(cost, latency, emissions)`` weights; the first
            pick is deployed.
        currency: The reporting currency.
        cost_model: Job time and cost assumptions.
        method: ``nsga2`` or ``exhaustive``.
        seed: NSGA-II seed.
        pop_size: NSGA-II population size.
        generations: NSGA-II generations.
        max_co2e_kg: ``limits.maxCo2eKg``, the job's emissions limit (kg CO2e), if set.
        market: ``aggregator.market``: ``onDemand``, ``spot`` or ``auto`` (both markets).
    """

    source: str
    clouds: tuple[str, ...]
    regions: tuple[tuple[str, str], ...]
    target: str
    min_vcpus: float
    min_memory_gib: float
    pin: Placement | None
    baseline: Placement | None
    max_cost: float
    max_latency_ms: float
    weights: tuple[tuple[float, ...], ...]
    currency: Currency
    cost_model: CostModel
    method: str
    seed: int
    pop_size: int
    generations: int
    max_co2e_kg: float | None = None
    market: str = ON_DEMAND


def error_view(source: str, key: str) -> ConfigView:
    """Return an empty view whose errors name the full key ``key`` (``fedcloud:baseline``)."""
    return ConfigView(source, key, {})


def cloud_name(view: ConfigView, key: str, value: Any) -> str:
    """Check that ``value`` is one of :data:`CLOUDS` (with a did-you-mean)."""
    if not isinstance(value, str) or value not in CLOUDS:
        import difflib

        close = difflib.get_close_matches(str(value)[:40], CLOUDS, n=1)
        hint = f"did you mean '{close[0]}'?" if close else f"use one of: {', '.join(CLOUDS)}."
        raise view.error(key, f"is '{short(value)}', not a known cloud", hint)
    return value


def region_ref(view: ConfigView, key: str, value: Any) -> tuple[str, str]:
    """Parse ``"<cloud>:<region>"`` (syntax and cloud only)."""
    if not isinstance(value, str) or ":" not in value:
        raise view.error(key, f"is {short(value)!r}, not '<cloud>:<region>'",
                         "write it like 'aws:us-east-1'.")
    cloud, region = value.split(":", 1)
    cloud_name(view, key, cloud)
    return cloud, region


def _placement(view: ConfigView, name: str) -> Placement:
    sub = view.sub(name)
    sub.check_keys(["cloud", "region", "instanceType"])
    cloud = cloud_name(sub, "cloud", sub.get_str("cloud"))
    return Placement(cloud, sub.get_str("region"), sub.get_str("instanceType"))


def _weights(top: ConfigView) -> tuple[tuple[float, ...], ...]:
    items = top.get_list("weights")
    if not items:
        raise top.error("weights", "is empty", "give at least one [cost, latency] or "
                        "[cost, latency, emissions] weight vector, e.g. [[5, 5]].")
    out: list[tuple[float, ...]] = []
    for i, w in enumerate(items):
        key = f"weights[{i}]"
        if (not isinstance(w, list) or len(w) not in (2, 3)
                or not all(isinstance(x, int | float) and not isinstance(x, bool) for x in w)):
            raise top.error(key, f"is {short(w)}, not a [cost, latency] or [cost, latency, "
                            "emissions] vector of numbers", "write it like [9, 1] or [4, 3, 3].")
        vec = tuple(float(x) for x in w)
        if any(x < 0 for x in vec):
            raise top.error(key, f"is {w!r}; weights cannot be negative",
                            "use non-negative weights, e.g. [9, 1].")
        if not any(vec):
            raise top.error(key, f"is {w!r}; at least one weight must be positive",
                            "use e.g. [1, 0] for cost only or [0, 0, 1] for emissions only.")
        out.append(vec)
    return tuple(out)


def _currency(top: ConfigView) -> Currency:
    cur = top.sub("currency")
    cur.check_keys(["code", "perUsd", "asOf"])
    code = cur.get_str("code")
    if not _CURRENCY_CODE.match(code):
        raise cur.error("code", f"is '{short(code)}', not an ISO 4217 code",
                        "use three capital letters, e.g. USD or KRW.")
    as_of = None
    if cur.has("asOf"):
        as_of = str(cur.get_any("asOf"))
        try:
            dt.date.fromisoformat(as_of)
        except ValueError:
            raise cur.error("asOf", f"is '{short(as_of)}', not a YYYY-MM-DD date") from None
    return Currency(code=code, per_usd=cur.get_float("perUsd", minimum=0,
                                                     exclusive_minimum=True), as_of=as_of)


def _cost_model(top: ConfigView, training_rounds: int, traffic: Traffic) -> CostModel:
    cm = top.sub("costModel")
    cm.check_keys(COST_MODEL_KEYS)
    # The job's rounds are the training's rounds unless the cost model says otherwise.
    rounds = cm.get_int("rounds", minimum=1) if cm.has("rounds") else training_rounds
    egress_view = cm.sub("egressUsdPerGb")
    egress_view.check_keys(list(CLOUDS))
    # Every cloud, not only the allowed ones: a baseline or pin may be elsewhere.
    egress = {c: egress_view.get_float(c, minimum=0) for c in CLOUDS}
    return CostModel(
        rounds=rounds,
        model_mb=cm.get_float("modelMb", minimum=0, exclusive_minimum=True),
        bandwidth_mbps=cm.get_float("bandwidthMbps", minimum=0, exclusive_minimum=True),
        round_train_s=cm.get_float("roundTrainS", minimum=0),
        rtts_per_round=cm.get_float("rttsPerRound", minimum=0),
        setup_hours=cm.get_float("setupHours", minimum=0),
        egress_usd_per_gb=egress,
        traffic=traffic,
        cpu_utilization=cm.get_float("cpuUtilization", minimum=0, maximum=1),
        spot_interruptions_per_hour=cm.get_float("spotInterruptionsPerHour", minimum=0,
                                                 maximum=60),
        resume_overhead_s=cm.get_float("resumeOverheadS", minimum=0),
    )


def _limits(top: ConfigView) -> tuple[float, float, float | None]:
    if not top.has("limits"):
        raise top.error("limits", "is required (no default: a cost limit means nothing "
                        "without the stack's currency)",
                        "set fedcloud:limits: {maxCost: <amount in fedcloud:currency.code>, "
                        "maxLatencyMs: <ms>} in the stack file.")
    limits = top.sub("limits")
    limits.check_keys(["maxCost", "maxLatencyMs", "maxCo2eKg"])
    co2 = (limits.get_float("maxCo2eKg", minimum=0, exclusive_minimum=True)
           if limits.has("maxCo2eKg") else None)
    return (limits.get_float("maxCost", minimum=0, exclusive_minimum=True),
            limits.get_float("maxLatencyMs", minimum=0, exclusive_minimum=True), co2)


def parse_plan(top: ConfigView, training_rounds: int,
               traffic: Traffic | None = None) -> PlanSettings:
    """Parse the optimizer's sections of a stack (defaults already merged).

    Args:
        top: The stack's top-level view.
        training_rounds: ``fedcloud:training.rounds``, the default of ``costModel.rounds``.
        traffic: What the app moves per round for ``fedcloud:training.wireDtype`` (default:
            the float32 declaration).

    Raises:
        ConfigError: A key is missing, malformed or out of range (names the key and the fix).
    """
    clouds_list = top.get_list("clouds")
    if not clouds_list:
        raise top.error("clouds", "is empty", f"list at least one of {list(CLOUDS)}.")
    clouds: list[str] = []
    for i, c in enumerate(clouds_list):
        cloud_name(top, f"clouds[{i}]", c)
        if c not in clouds:
            clouds.append(c)
    regions: list[tuple[str, str]] = []
    for i, item in enumerate(top.get_list("regions")):
        ref = region_ref(top, f"regions[{i}]", item)
        if ref not in regions:
            regions.append(ref)
    agg = top.sub("aggregator")
    agg.check_keys(AGGREGATOR_KEYS)
    max_cost, max_latency, max_co2e = _limits(top)
    opt = top.sub("optimizer")
    opt.check_keys(["method", "seed", "popSize", "generations"])
    return PlanSettings(
        source=top.source,
        clouds=tuple(clouds),
        regions=tuple(regions),
        target=agg.get_str("target", choices=TARGETS),
        min_vcpus=agg.get_float("minVcpus", minimum=0),
        min_memory_gib=agg.get_float("minMemoryGib", minimum=0),
        pin=_placement(agg, "pin") if agg.has("pin") else None,
        baseline=_placement(top, "baseline") if top.data.get("baseline") else None,
        max_cost=max_cost,
        max_latency_ms=max_latency,
        weights=_weights(top),
        currency=_currency(top),
        cost_model=_cost_model(top, training_rounds, traffic or traffic_of()),
        method=opt.get_str("method", choices=METHODS),
        seed=opt.get_int("seed", minimum=0),
        pop_size=opt.get_int("popSize", minimum=4, maximum=10_000),
        generations=opt.get_int("generations", minimum=1, maximum=100_000),
        max_co2e_kg=max_co2e,
        market=agg.get_str("market", choices=MARKETS),
    )
