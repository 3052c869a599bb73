"""The catalogue's carbon and VM-shape facts: grid factor and PUE per region, power per size.

Two validated CSVs beside the price files (``carbon_grid.csv``, ``vm_power.csv``, derived by
``derive_carbon.py`` from ``../shared/data/carbon``); a bad value fails with the file and row.
The job emissions model that uses them is ``optimizer/cost.py``; see catalog/README.md.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from fedcloud.core.errors import CatalogError
from optimizer.catalog.common import CLOUDS, PricedVm, _read_rows

GRID_COLUMNS = ("cloud", "region", "grid_kgco2e_per_kwh", "grid_basis", "grid_source", "pue",
                "pue_source")
POWER_COLUMNS = ("cloud", "instance_type", "architectures", "min_watts_per_vcpu",
                 "max_watts_per_vcpu", "watts_source", "network_gbps", "network_source")
# Sanity bounds (a value outside them is a unit error: t/kWh for kg/kWh, kW for W, Mbps for Gbps).
MAX_GRID_KG_PER_KWH = 1.5
MAX_PUE = 3.0
MAX_WATTS_PER_VCPU = 50.0
MAX_NETWORK_GBPS = 400.0
AGGREGATOR_COLUMNS = ("quantity", "value", "unit", "source", "source_date")
AGGREGATOR_QUANTITIES = ("serverapp_baseline_mb", "copies_per_participant", "strategy_copies",
                         "aggregate_s_per_mb")


@dataclass(frozen=True)
class GridFactor:
    """A region's grid emissions factor (``None``: no factor, see ``basis``) and PUE."""

    kg_per_kwh: float | None
    basis: str
    source: str
    pue: float
    pue_source: str


@dataclass(frozen=True)
class VmPower:
    """A VM size's CCF power coefficients per vCPU and its published network bandwidth."""

    architectures: str
    min_watts_per_vcpu: float
    max_watts_per_vcpu: float
    watts_source: str
    network_gbps: float
    network_source: str


def parse_grid(path: Path) -> dict[tuple[str, str], GridFactor]:
    """Read and validate ``carbon_grid.csv`` (errors name the file and row)."""
    out: dict[tuple[str, str], GridFactor] = {}
    lines: dict[tuple[str, str], int] = {}
    for row in _read_rows(path, GRID_COLUMNS):
        cloud = row.text("cloud")
        if cloud not in CLOUDS:
            raise row.fail(f"cloud '{cloud}' is not one of {list(CLOUDS)}")
        key = (cloud, row.text("region"))
        if key in out:
            raise row.fail(f"duplicate of row {lines[key]} ({cloud}, {key[1]})")
        lines[key] = row.line
        factor = row.number("grid_kgco2e_per_kwh", minimum=0, maximum=MAX_GRID_KG_PER_KWH,
                            allow_empty=True)
        basis = row.text("grid_basis")
        if (factor is None) != (basis == "unknown"):
            raise row.fail("grid_kgco2e_per_kwh is blank exactly when grid_basis is 'unknown'")
        out[key] = GridFactor(
            kg_per_kwh=factor, basis=basis, source=row.text("grid_source", allow_empty=True),
            pue=row.required_number("pue", minimum=1.0, maximum=MAX_PUE),
            pue_source=row.text("pue_source"))
    return out


def parse_power(path: Path) -> dict[tuple[str, str], VmPower]:
    """Read and validate ``vm_power.csv``."""
    out: dict[tuple[str, str], VmPower] = {}
    for row in _read_rows(path, POWER_COLUMNS):
        cloud = row.text("cloud")
        if cloud not in CLOUDS:
            raise row.fail(f"cloud '{cloud}' is not one of {list(CLOUDS)}")
        key = (cloud, row.text("instance_type"))
        if key in out:
            raise row.fail(f"duplicate instance type {key[1]}")
        lo = row.required_number("min_watts_per_vcpu", minimum=0, maximum=MAX_WATTS_PER_VCPU)
        hi = row.required_number("max_watts_per_vcpu", minimum=0, maximum=MAX_WATTS_PER_VCPU)
        if hi < lo:
            raise row.fail(f"max_watts_per_vcpu {hi:g} is below min_watts_per_vcpu {lo:g}")
        out[key] = VmPower(
            architectures=row.text("architectures"), min_watts_per_vcpu=lo,
            max_watts_per_vcpu=hi, watts_source=row.text("watts_source"),
            network_gbps=row.required_number("network_gbps", minimum=0, exclusive_minimum=True,
                                             maximum=MAX_NETWORK_GBPS),
            network_source=row.text("network_source"))
    return out


def parse_aggregator(path: Path) -> dict[str, float]:
    """Read ``aggregator.csv``: the ServerApp's constants measured here (all required)."""
    out: dict[str, float] = {}
    for row in _read_rows(path, AGGREGATOR_COLUMNS):
        name = row.text("quantity")
        if name not in AGGREGATOR_QUANTITIES:
            raise row.fail(f"quantity '{name}' is not one of {list(AGGREGATOR_QUANTITIES)}")
        out[name] = row.required_number("value", minimum=0, maximum=1e6)
        row.text("source")
        row.date("source_date")
    missing = [q for q in AGGREGATOR_QUANTITIES if q not in out]
    if missing:
        raise CatalogError(
            f"{path.name}: quantity '{missing[0]}' has no row.",
            "add it from benchmarks/aggregator_memory.py's output.")
    return out


def load_carbon(directory: Path, vms: Sequence[PricedVm]) -> tuple[
        dict[tuple[str, str], GridFactor], dict[tuple[str, str], VmPower], dict[str, float]]:
    """Read the three files and check that every priced region and VM size has its row.

    Raises:
        CatalogError: A file or row is malformed, or a row is missing.
    """
    grid = parse_grid(directory / "carbon_grid.csv")
    power = parse_power(directory / "vm_power.csv")
    problem = check_coverage(grid, power, {(v.cloud, v.region) for v in vms},
                             {(v.cloud, v.instance_type) for v in vms}, directory)
    if problem:
        raise CatalogError(f"{problem}.", "regenerate it: python -m "
                           "optimizer.catalog.derive_carbon ../shared/data/carbon.")
    return grid, power, parse_aggregator(directory / "aggregator.csv")


def check_coverage(grid: Mapping[tuple[str, str], GridFactor],
                   power: Mapping[tuple[str, str], VmPower],
                   priced: set[tuple[str, str]], types: set[tuple[str, str]],
                   directory: Path) -> str | None:
    """Return a problem if a priced region or VM size has no carbon row (else ``None``)."""
    no_grid = sorted(priced - set(grid))
    if no_grid:
        return (f"{directory.name}/carbon_grid.csv: priced region {no_grid[0][0]}:"
                f"{no_grid[0][1]} has no row ({len(no_grid)} such)")
    no_power = sorted(types - set(power))
    if no_power:
        return (f"{directory.name}/vm_power.csv: instance type {no_power[0][0]}:"
                f"{no_power[0][1]} has no row ({len(no_power)} such)")
    return None
