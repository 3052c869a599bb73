"""What the user asks the optimizer: one validated, frozen :class:`PlanRequest` per stack.

:meth:`PlanRequest.from_raw` reads the optimizer's config sections (``clouds``, ``regions``,
``aggregator``, ``limits``, ``weights``, ``baseline``, ``currency``, ``costModel``,
``optimizer``) and the participants, and checks every cloud, region and instance type name
against the catalogue, with a did-you-mean. Sub-keys a stack leaves out of a structured section
take the default declared in ``Pulumi.yaml`` (Pulumi itself replaces a whole object value, so the
merge is done here, once, for both readers of the config).
"""

from __future__ import annotations

import datetime as dt
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from fedcloud.core.config import ConfigView, RawConfig, project_defaults
from fedcloud.core.errors import CatalogError, ConfigError
from fedcloud.core.participants import Participant, parse_participants
from optimizer import catalog
from optimizer.catalog import CLOUDS, load_catalog
from optimizer.catalog.common import did_you_mean

TARGETS = ("auto", *CLOUDS, "local")
METHODS = ("nsga2", "exhaustive")
# Keys of fedcloud:aggregator. The optimizer reads target, minVcpus, minMemoryGib and pin; the
# others belong to the infrastructure part and are accepted here so that a typo in any of them
# is still caught with a did-you-mean.
AGGREGATOR_KEYS = ("target", "minVcpus", "minMemoryGib", "pin", "sshPublicKeyPath", "diskGb",
                   "image")
COST_MODEL_KEYS = ("rounds", "modelMb", "bandwidthMbps", "roundTrainS", "rttsPerRound",
                   "setupHours", "egressUsdPerGb")
_CURRENCY_CODE = re.compile(r"^[A-Z]{3}$")


@dataclass(frozen=True)
class Placement:
    """A (cloud, region, instance type) named in the config: a pin or the baseline."""

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
    """Assumptions of the job time and cost model (see optimizer/README.md, "Cost model").

    Attributes:
        rounds: Federated rounds of the job.
        model_mb: Model size in MB (10^6 bytes) as sent over the wire.
        bandwidth_mbps: Each participant's link, Mbit/s.
        round_train_s: Local training time per round on a participant, seconds.
        rtts_per_round: Round trips on a round's critical path (connection set-up, TCP slow
            start of each model transfer, request/response exchanges).
        setup_hours: Billed hours that do not depend on the region: provisioning, bootstrap,
            waiting for participants, tear-down.
        egress_usd_per_gb: Each cloud's internet egress price, USD per GB (10^9 bytes).
    """

    rounds: int
    model_mb: float
    bandwidth_mbps: float
    round_train_s: float
    rtts_per_round: float
    setup_hours: float
    egress_usd_per_gb: Mapping[str, float]


@dataclass(frozen=True)
class PlanRequest:
    """Everything the optimizer needs, validated (one per stack).

    Attributes:
        stack: Stack name.
        source: Where the config came from (for messages).
        participants: The federation's members.
        clouds: Clouds the aggregator may use (after ``aggregator.target`` is applied).
        regions: Allow-list of ``(cloud, region)``; empty means every region of ``clouds``.
        target: ``auto``, a cloud, or ``local``.
        min_vcpus: Minimum aggregator vCPUs.
        min_memory_gib: Minimum aggregator memory, GiB.
        pin: A placement that replaces the optimizer's choice, if set.
        baseline: The "before optimization" placement to compare with, if set.
        max_cost: The job's cost limit, in the stack currency.
        max_latency_ms: Limit on the largest RTT from the aggregator to any participant.
        weights: ``(cost, latency)`` weights, one pick of the front each; the first is deployed.
        currency: The stack's reporting currency.
        cost_model: Job time and cost assumptions.
        method: ``nsga2`` or ``exhaustive``.
        seed: Random seed of NSGA-II.
        pop_size: NSGA-II population size.
        generations: NSGA-II generations.
    """

    stack: str
    source: str
    participants: tuple[Participant, ...]
    clouds: tuple[str, ...]
    regions: tuple[tuple[str, str], ...]
    target: str
    min_vcpus: float
    min_memory_gib: float
    pin: Placement | None
    baseline: Placement | None
    max_cost: float
    max_latency_ms: float
    weights: tuple[tuple[float, float], ...]
    currency: Currency
    cost_model: CostModel
    method: str
    seed: int
    pop_size: int
    generations: int

    @property
    def max_cost_usd(self) -> float:
        """The cost limit in USD."""
        return self.max_cost / self.currency.per_usd

    @classmethod
    def from_raw(cls, raw: RawConfig) -> PlanRequest:
        """Parse and validate the optimizer's part of a stack's config.

        Raises:
            ConfigError: A key is missing, malformed, out of range, or names an unknown cloud,
                region or instance type (the message names the key and the fix).
        """
        top = raw.view()
        declared = project_defaults()
        participants = parse_participants(raw)
        _check_participants(top, participants)

        clouds_list = top.get_list("clouds")
        if not clouds_list:
            raise top.error("clouds", "is empty", f"list at least one of {list(CLOUDS)}.")
        clouds: list[str] = []
        for i, c in enumerate(clouds_list):
            _cloud(top, f"clouds[{i}]", c)
            if c not in clouds:
                clouds.append(c)
        # With fedcloud:auth.onlyLinked, only the clouds `fedcloud auth add` linked are offered.
        from infra.auth import offerable_clouds

        clouds = offerable_clouds(raw, clouds)

        agg = _section(top, "aggregator", declared)
        agg.check_keys(AGGREGATOR_KEYS)
        target = agg.get_str("target", choices=TARGETS)
        if target in CLOUDS:
            if target not in clouds:
                raise agg.error("target", f"is '{target}' but the clouds offered are {clouds} "
                                "(fedcloud:clouds, with fedcloud:auth.onlyLinked applied)",
                                f"add '{target}' to fedcloud:clouds (and link it if onlyLinked "
                                "is set), or change the target.")
            clouds = [target]
        min_vcpus = agg.get_float("minVcpus", minimum=0)
        min_mem = agg.get_float("minMemoryGib", minimum=0)
        pin = _placement(agg, "pin") if agg.has("pin") else None

        regions: list[tuple[str, str]] = []
        for i, item in enumerate(top.get_list("regions")):
            cloud, region = _region_ref(top, f"regions[{i}]", item)
            if cloud in clouds and (cloud, region) not in regions:
                regions.append((cloud, region))
            elif cloud not in clouds and target not in CLOUDS:
                raise top.error(f"regions[{i}]", f"is in cloud '{cloud}', which is not in "
                                f"fedcloud:clouds {clouds}",
                                f"add '{cloud}' to fedcloud:clouds or remove the region.")
        if top.get_list("regions") and not regions:
            raise top.error("regions", f"has no region in the allowed clouds {clouds}",
                            "list regions of those clouds, or leave fedcloud:regions empty.")

        if not top.has("limits"):
            raise top.error("limits", "is required (no default: a cost limit means nothing "
                            "without the stack's currency)",
                            "set fedcloud:limits: {maxCost: <amount in fedcloud:currency.code>, "
                            "maxLatencyMs: <ms>} in the stack file.")
        limits = top.sub("limits")
        limits.check_keys(["maxCost", "maxLatencyMs"])
        max_cost = limits.get_float("maxCost", minimum=0, exclusive_minimum=True)
        max_latency = limits.get_float("maxLatencyMs", minimum=0, exclusive_minimum=True)

        weights = _weights(top)
        baseline = _placement(top, "baseline") if top.has("baseline") else None

        cur = _section(top, "currency", declared)
        cur.check_keys(["code", "perUsd", "asOf"])
        code = cur.get_str("code")
        if not _CURRENCY_CODE.match(code):
            raise cur.error("code", f"is '{code}', not an ISO 4217 code",
                            "use three capital letters, e.g. USD or KRW.")
        as_of = None
        if cur.has("asOf"):
            as_of = str(cur.get_any("asOf"))
            try:
                dt.date.fromisoformat(as_of)
            except ValueError:
                raise cur.error("asOf", f"is '{as_of}', not a YYYY-MM-DD date") from None
        currency = Currency(code=code, per_usd=cur.get_float("perUsd", minimum=0,
                                                            exclusive_minimum=True), as_of=as_of)

        cost_model = _cost_model(top, declared)

        opt = _section(top, "optimizer", declared)
        opt.check_keys(["method", "seed", "popSize", "generations"])
        return cls(
            stack=raw.stack,
            source=raw.source,
            participants=participants,
            clouds=tuple(clouds),
            regions=tuple(regions),
            target=target,
            min_vcpus=min_vcpus,
            min_memory_gib=min_mem,
            pin=pin,
            baseline=baseline,
            max_cost=max_cost,
            max_latency_ms=max_latency,
            weights=weights,
            currency=currency,
            cost_model=cost_model,
            method=opt.get_str("method", choices=METHODS),
            seed=opt.get_int("seed", minimum=0),
            pop_size=opt.get_int("popSize", minimum=4, maximum=10_000),
            generations=opt.get_int("generations", minimum=1, maximum=100_000),
        )


def _merge(default: Any, value: Any) -> Any:
    """Overlay ``value`` on ``default`` key by key (mappings only), recursively."""
    if isinstance(default, Mapping) and isinstance(value, Mapping):
        out = dict(default)
        for k, v in value.items():
            out[k] = _merge(default.get(k), v)
        return out
    return value if value is not None else default


def _section(top: ConfigView, name: str, declared: Mapping[str, Any]) -> ConfigView:
    """Return a view of a structured section with the declared sub-key defaults filled in."""
    view = top.sub(name)
    merged = _merge(declared.get(name), dict(view.data))
    return ConfigView(view.source, view.prefix, merged)


def _cloud(view: ConfigView, key: str, value: Any) -> str:
    if not isinstance(value, str) or value not in CLOUDS:
        hint = did_you_mean(str(value), CLOUDS) or f"use one of: {', '.join(CLOUDS)}."
        raise view.error(key, f"is '{value}', not a known cloud", hint)
    return value


def _region_ref(view: ConfigView, key: str, value: Any, priced: bool = True) -> tuple[str, str]:
    """Parse ``"<cloud>:<region>"`` and check the region against the catalogue."""
    if not isinstance(value, str) or ":" not in value:
        raise view.error(key, f"is {value!r}, not '<cloud>:<region>'",
                         "write it like 'aws:us-east-1'.")
    cloud, region = value.split(":", 1)
    _cloud(view, key, cloud)
    cat = load_catalog()
    known = cat.priced_regions(cloud) if priced else cat.located_regions(cloud)
    if region not in known:
        what = "priced" if priced else "located"
        if not priced and region in cat.priced_regions(cloud):
            what = "located (it has a price but no coordinates)"
        hint = did_you_mean(value, [f"{cloud}:{r}" for r in known])
        raise view.error(key, f"is '{value}', not a {what} {cloud} region in the catalogue",
                         hint or f"use a {cloud} region from optimizer/catalog/regions.csv, "
                         "or give lat/lon for a location.")
    return cloud, region


def _check_participants(top: ConfigView, participants: tuple[Participant, ...]) -> None:
    """Check each participant's region and rttMs keys against the catalogue."""
    for p, item in zip(participants, top.items("participants"), strict=True):
        if p.location.region is not None:
            loc = item.sub("location")
            _region_ref(loc, "region", p.location.region, priced=False)
        if p.rtt_ms:
            view = item.sub("rttMs")
            for key in p.rtt_ms:
                _region_ref(view, key, key)


def _placement(view: ConfigView, name: str) -> Placement:
    """Parse ``{cloud, region, instanceType}`` and check it against the catalogue."""
    sub = view.sub(name)
    sub.check_keys(["cloud", "region", "instanceType"])
    cloud = _cloud(sub, "cloud", sub.get_str("cloud"))
    region = sub.get_str("region")
    itype = sub.get_str("instanceType")
    try:
        catalog.validate_region(cloud, region)
    except CatalogError as exc:
        raise sub.error("region", f"is '{region}': {exc.message.rstrip('.')}", exc.fix) from None
    try:
        catalog.validate_instance_type(cloud, itype, region)
    except CatalogError as exc:
        raise sub.error("instanceType", f"is '{itype}': {exc.message.rstrip('.')}",
                        exc.fix) from None
    return Placement(cloud, region, itype)


def _weights(top: ConfigView) -> tuple[tuple[float, float], ...]:
    items = top.get_list("weights")
    if not items:
        raise top.error("weights", "is empty", "give at least one [cost, latency] pair, e.g. "
                        "[[5, 5]].")
    out: list[tuple[float, float]] = []
    for i, w in enumerate(items):
        key = f"weights[{i}]"
        if (not isinstance(w, list) or len(w) != 2
                or not all(isinstance(x, int | float) and not isinstance(x, bool) for x in w)):
            raise top.error(key, f"is {w!r}, not a [cost, latency] pair of numbers",
                            "write it like [9, 1].")
        cost, lat = float(w[0]), float(w[1])
        if cost < 0 or lat < 0:
            raise top.error(key, f"is {w!r}; weights cannot be negative",
                            "use non-negative weights, e.g. [9, 1].")
        if cost == 0 and lat == 0:
            raise top.error(key, "is [0, 0]; at least one weight must be positive",
                            "use e.g. [1, 0] for cost only or [0, 1] for latency only.")
        out.append((cost, lat))
    return tuple(out)


def _cost_model(top: ConfigView, declared: Mapping[str, Any]) -> CostModel:
    cm = _section(top, "costModel", declared)
    cm.check_keys(COST_MODEL_KEYS)
    if cm.has("rounds"):
        rounds = cm.get_int("rounds", minimum=1)
    else:
        # The job's rounds are the training's rounds unless the cost model says otherwise.
        training = _section(top, "training", declared)
        if not training.has("rounds"):
            raise cm.error("rounds", "is not set and neither is fedcloud:training.rounds",
                           "set fedcloud:costModel.rounds (or fedcloud:training.rounds).")
        rounds = training.get_int("rounds", minimum=1)
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
    )


__all__ = ["ConfigError", "CostModel", "Currency", "Placement", "PlanRequest"]
