"""What the user asks the optimizer, checked against the catalogue: one :class:`PlanRequest`.

:meth:`PlanRequest.build` takes the stack's typed optimizer section
(:class:`fedcloud.core.plan.PlanSettings`), the participants and the clouds on offer, and checks
every cloud, region and instance-type name against the catalogue, with a did-you-mean.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from fedcloud.core.config import ConfigView
from fedcloud.core.errors import CatalogError
from fedcloud.core.participants import Participant
from fedcloud.core.plan import (
    AUTO,
    CLOUDS,
    MARKETS,
    METHODS,
    ON_DEMAND,
    SPOT,
    CostModel,
    Currency,
    Placement,
    PlanSettings,
    error_view,
)
from optimizer import catalog
from optimizer.catalog import load_catalog
from optimizer.catalog.common import did_you_mean

# Clouds whose spot (Spot VM) prices the optimizer uses; Azure's catalogue rows carry none.
SPOT_CLOUDS = ("aws", "gcp")


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
        weights: ``(cost, latency)`` or ``(cost, latency, emissions)`` weights, one pick of
            the front each; the first is deployed.
        currency: The stack's reporting currency.
        cost_model: Job time and cost assumptions.
        method: ``nsga2`` or ``exhaustive``.
        seed: Random seed of NSGA-II.
        pop_size: NSGA-II population size.
        generations: NSGA-II generations.
        max_co2e_kg: Limit on the job's emissions, kg CO2e (``None``: no limit).
        market: ``onDemand``, ``spot`` (spot prices only, AWS and GCP) or ``auto`` (both).
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
    weights: tuple[tuple[float, ...], ...]
    currency: Currency
    cost_model: CostModel
    method: str
    seed: int
    pop_size: int
    generations: int
    max_co2e_kg: float | None = None
    market: str = ON_DEMAND

    @property
    def max_cost_usd(self) -> float:
        """The cost limit in USD."""
        return self.max_cost / self.currency.per_usd

    @classmethod
    def build(cls, settings: PlanSettings, participants: Sequence[Participant],
              offered: Sequence[str] | None = None, stack: str = "") -> PlanRequest:
        """Check the stack's optimizer section against the catalogue and the clouds on offer.

        Args:
            settings: ``StackConfig.plan``.
            participants: ``StackConfig.participants``.
            offered: The clouds the aggregator may use after the Cloud Authenticator's filter
                (``fedcloud:auth.onlyLinked``); default ``settings.clouds``.
            stack: The stack name.

        Raises:
            ConfigError: A name is not in the catalogue, or the clouds, target and regions
                leave nothing to choose from (the message names the key and the fix).
        """
        top = error_view(settings.source, "fedcloud:")
        _check_participants(settings.source, participants)
        clouds = list(offered if offered is not None else settings.clouds)
        target = settings.target
        if target in CLOUDS:
            if target not in clouds:
                raise error_view(settings.source, "fedcloud:aggregator").error(
                    "target", f"is '{target}' but the clouds offered are {clouds} "
                    "(fedcloud:clouds, with fedcloud:auth.onlyLinked applied)",
                    f"add '{target}' to fedcloud:clouds (and link it if onlyLinked "
                    "is set), or change the target.")
            clouds = [target]
        regions: list[tuple[str, str]] = []
        for i, (cloud, region) in enumerate(settings.regions):
            _priced_region(top, f"regions[{i}]", cloud, region)
            if cloud in clouds and (cloud, region) not in regions:
                regions.append((cloud, region))
            elif cloud not in clouds and target not in CLOUDS:
                raise top.error(f"regions[{i}]", f"is in cloud '{cloud}', which is not in "
                                f"fedcloud:clouds {clouds}",
                                f"add '{cloud}' to fedcloud:clouds or remove the region.")
        if settings.regions and not regions:
            raise top.error("regions", f"has no region in the allowed clouds {clouds}",
                            "list regions of those clouds, or leave fedcloud:regions empty.")
        if settings.market == SPOT and not set(clouds) & set(SPOT_CLOUDS):
            raise error_view(settings.source, "fedcloud:aggregator").error(
                "market", f"is 'spot' but the clouds offered {clouds} have no spot prices in "
                f"the catalogue (spot is priced for {' and '.join(SPOT_CLOUDS)} only)",
                "set fedcloud:aggregator.market to onDemand or auto, or allow aws or gcp.")
        pin = settings.pin and _in_catalogue(settings.source, "fedcloud:aggregator.pin",
                                             settings.pin)
        baseline = settings.baseline and _in_catalogue(settings.source, "fedcloud:baseline",
                                                       settings.baseline)
        return cls(
            stack=stack, source=settings.source, participants=tuple(participants),
            clouds=tuple(clouds), regions=tuple(regions), target=target,
            min_vcpus=settings.min_vcpus, min_memory_gib=settings.min_memory_gib,
            pin=pin or None, baseline=baseline or None, max_cost=settings.max_cost,
            max_latency_ms=settings.max_latency_ms, weights=settings.weights,
            currency=settings.currency, cost_model=settings.cost_model,
            method=settings.method, seed=settings.seed, pop_size=settings.pop_size,
            generations=settings.generations, max_co2e_kg=settings.max_co2e_kg,
            market=settings.market,
        )


def _priced_region(view: ConfigView, key: str, cloud: str, region: str,
                   priced: bool = True) -> None:
    """Check ``cloud:region`` against the catalogue's priced (or located) regions."""
    cat = load_catalog()
    known = cat.priced_regions(cloud) if priced else cat.located_regions(cloud)
    if region in known:
        return
    what = "priced" if priced else "located"
    if not priced and region in cat.priced_regions(cloud):
        what = "located (it has a price but no coordinates)"
    value = f"{cloud}:{region}"
    hint = did_you_mean(value, [f"{cloud}:{r}" for r in known])
    raise view.error(key, f"is '{value}', not a {what} {cloud} region in the catalogue",
                     hint or f"use a {cloud} region from optimizer/catalog/regions.csv, "
                     "or give lat/lon for a location.")


def _check_participants(source: str, participants: Sequence[Participant]) -> None:
    """Check each participant's region and rttMs keys against the catalogue."""
    for i, p in enumerate(participants):
        base = f"fedcloud:participants[{i}]"
        if p.location.region is not None:
            cloud, region = p.location.region.split(":", 1)
            _priced_region(error_view(source, f"{base}.location"), "region", cloud, region,
                           priced=False)
        for key in p.rtt_ms:
            cloud, _, region = key.partition(":")
            _priced_region(error_view(source, f"{base}.rttMs"), key, cloud, region)


def _in_catalogue(source: str, key: str, placement: Placement) -> Placement:
    """Check a pin or baseline's region and instance type against the catalogue."""
    view = error_view(source, key)
    try:
        catalog.validate_region(placement.cloud, placement.region)
    except CatalogError as exc:
        raise view.error("region", f"is '{placement.region}': {exc.message.rstrip('.')}",
                         exc.fix) from None
    try:
        catalog.validate_instance_type(placement.cloud, placement.instance_type,
                                       placement.region)
    except CatalogError as exc:
        raise view.error("instanceType", f"is '{placement.instance_type}': "
                         f"{exc.message.rstrip('.')}", exc.fix) from None
    return placement


__all__ = ["AUTO", "MARKETS", "METHODS", "ON_DEMAND", "SPOT", "SPOT_CLOUDS", "CostModel",
           "Currency", "Placement", "PlanRequest"]
