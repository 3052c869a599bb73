"""The catalogue's data contract: file layout, column schemas, a validating loader and look-ups.

Every file is a CSV whose header must equal the schema below exactly; units live in the column
names. :func:`load_catalog` checks types, units, ranges, duplicates and cross-file references
(every priced region has coordinates) and fails with a :class:`CatalogError` that names the file,
the row (1-based line number, the header being line 1) and the problem.

Per-cloud modules (``aws_catalog.py`` ...) state only their constants and export the methods of
a :class:`CloudLookups` bound to them (over the ``*_impl`` functions here, SkyPilot-style); the
package ``__init__`` dispatches on the cloud name.
"""

from __future__ import annotations

import csv
import datetime as dt
import difflib
import functools
import io
import math
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fedcloud.core.errors import CatalogError
from fedcloud.core.files import write_atomic_with

CATALOG_DIR = Path(__file__).resolve().parent
CLOUDS: tuple[str, ...] = ("aws", "gcp", "azure")
CONTINENTS = ("Africa", "Asia", "Europe", "North America", "South America", "Oceania")

VM_COLUMNS = (
    "region", "instance_type", "vcpus", "memory_gib", "price_usd_per_hour",
    "spot_price_usd_per_hour", "source", "source_date",
)
REGION_COLUMNS = (
    "cloud", "region", "display_name", "city", "country", "continent", "latitude_deg",
    "longitude_deg", "source",
)
LATENCY_COLUMNS = ("cloud", "from_region", "to_region", "rtt_ms", "statistic", "source",
                   "source_date")

# Sanity bounds: a price outside them is a unit or parsing error (per month, per second, cents).
MAX_PRICE_USD_PER_HOUR = 100.0
MAX_RTT_MS = 2000.0


def vm_file(cloud: str) -> str:
    """Return the file name of ``cloud``'s VM price file."""
    return f"vms_{cloud}.csv"


@dataclass(frozen=True)
class PricedVm:
    """A VM size in one region of one cloud, with its shape and on-demand Linux price."""

    cloud: str
    region: str
    instance_type: str
    vcpus: int
    memory_gib: float
    price_usd_per_hour: float


@dataclass(frozen=True)
class VmRow(PricedVm):
    """One priced VM size in one region (on-demand, Linux): a price file's row and its cloud."""

    spot_price_usd_per_hour: float | None
    source: str
    source_date: str


@dataclass(frozen=True)
class Region:
    """A cloud region and where it is."""

    cloud: str
    region: str
    display_name: str
    city: str
    country: str
    continent: str
    latitude_deg: float
    longitude_deg: float

    @property
    def key(self) -> str:
        """``<cloud>:<region>``."""
        return f"{self.cloud}:{self.region}"


@dataclass(frozen=True, eq=False)  # identity hash: cached per loaded catalogue
class Catalog:
    """The validated catalogue, read once per process.

    Attributes:
        vms: Every priced VM row, ordered by cloud (``CLOUDS`` order), region, instance type.
        regions: ``(cloud, region)`` to :class:`Region`, for every region with coordinates.
        latency: ``(cloud, from_region, to_region)`` to the measured RTT in ms (directional).
        latency_statistic: ``cloud`` to the statistic its measurements are (for reports).
        grid: ``(cloud, region)`` to its :class:`~optimizer.catalog.carbon.GridFactor`.
        power: ``(cloud, instance_type)`` to its :class:`~optimizer.catalog.carbon.VmPower`.
        aggregator: The ServerApp's measured constants (``aggregator.csv``) by quantity.
    """

    vms: tuple[VmRow, ...]
    regions: Mapping[tuple[str, str], Region]
    latency: Mapping[tuple[str, str, str], float]
    latency_statistic: Mapping[str, str]
    grid: Mapping[tuple[str, str], Any] = field(default_factory=dict)
    power: Mapping[tuple[str, str], Any] = field(default_factory=dict)
    aggregator: Mapping[str, float] = field(default_factory=dict)

    def vms_of(self, cloud: str) -> tuple[VmRow, ...]:
        """Return the rows of one cloud."""
        return tuple(v for v in self.vms if v.cloud == cloud)

    def priced_regions(self, cloud: str) -> list[str]:
        """Return the regions of ``cloud`` that have at least one price, sorted."""
        return sorted({v.region for v in self.vms if v.cloud == cloud})

    def located_regions(self, cloud: str) -> list[str]:
        """Return the regions of ``cloud`` that have coordinates, sorted."""
        return sorted(r for c, r in self.regions if c == cloud)


class _Row:
    """Typed access to one CSV row with errors naming the file, the line and the column."""

    def __init__(self, file: str, line: int, data: Mapping[str, str]) -> None:
        self.file = file
        self.line = line
        self.data = data

    def fail(self, problem: str, fix: str | None = None) -> CatalogError:
        return CatalogError(f"{self.file} row {self.line}: {problem}.",
                            fix or "correct the row, or regenerate the file (see "
                            "optimizer/catalog/README.md).")

    def text(self, col: str, allow_empty: bool = False) -> str:
        value = (self.data.get(col) or "").strip()
        if not value and not allow_empty:
            raise self.fail(f"column '{col}' is empty")
        return value

    def number(self, col: str, minimum: float | None = None, maximum: float | None = None,
               exclusive_minimum: bool = False, allow_empty: bool = False) -> float | None:
        raw = self.text(col, allow_empty=allow_empty)
        if not raw:
            return None
        try:
            value = float(raw)
        except ValueError:
            raise self.fail(f"column '{col}' is '{raw}', not a number") from None
        if not math.isfinite(value):
            raise self.fail(f"column '{col}' is '{raw}', not a finite number")
        if minimum is not None and (value < minimum or (exclusive_minimum and value == minimum)):
            op = ">" if exclusive_minimum else ">="
            raise self.fail(f"column '{col}' is {raw}; it must be {op} {minimum:g}")
        if maximum is not None and value > maximum:
            raise self.fail(f"column '{col}' is {raw}; it must be <= {maximum:g} (wrong unit?)")
        return value

    def required_number(self, col: str, **kwargs: float | bool) -> float:
        value = self.number(col, **kwargs)  # type: ignore[arg-type]
        assert value is not None
        return value

    def date(self, col: str) -> str:
        raw = self.text(col, allow_empty=True)
        if raw:
            try:
                dt.date.fromisoformat(raw)
            except ValueError:
                raise self.fail(f"column '{col}' is '{raw}', not a YYYY-MM-DD date") from None
        return raw


def _read_rows(path: Path, columns: Sequence[str]) -> list[_Row]:
    name = _display(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise CatalogError(f"{name}: catalogue file not found.",
                           "restore it from git (git checkout -- optimizer/catalog).") from None
    reader = csv.DictReader(io.StringIO(text))
    header = tuple(reader.fieldnames or ())
    if header != tuple(columns):
        missing = [c for c in columns if c not in header]
        extra = [c for c in header if c not in columns]
        detail = "; ".join(filter(None, [
            f"missing {missing}" if missing else "",
            f"unexpected {extra}" if extra else "",
            "columns out of order" if not missing and not extra else "",
        ]))
        raise CatalogError(f"{name} row 1: header does not match the schema ({detail}).",
                           f"use exactly these columns: {','.join(columns)}.")
    rows = []
    for i, data in enumerate(reader, start=2):
        if None in data:
            raise CatalogError(f"{name} row {i}: more fields than columns.",
                               "quote values that contain commas.")
        rows.append(_Row(name, i, data))
    return rows


def _display(path: Path) -> str:
    try:
        return str(path.resolve().relative_to(CATALOG_DIR.parent.parent))
    except ValueError:
        return str(path)


def region_pattern_error(cloud: str, region: str, pattern: re.Pattern[str]) -> str | None:
    """Return a problem description if ``region`` does not look like a ``cloud`` region code."""
    if not pattern.fullmatch(region):
        return f"'{region}' is not a {cloud} region code"
    return None


def parse_vm_rows(path: Path, cloud: str, region_pattern: re.Pattern[str],
                  instance_pattern: re.Pattern[str]) -> list[VmRow]:
    """Read and validate one cloud's VM price file.

    Raises:
        CatalogError: Naming the file, the row and the problem.
    """
    out: list[VmRow] = []
    seen: dict[tuple[str, str], int] = {}
    for row in _read_rows(path, VM_COLUMNS):
        region = row.text("region")
        if not region_pattern.fullmatch(region):
            raise row.fail(f"region '{region}' is not a {cloud} region code")
        itype = row.text("instance_type")
        if not instance_pattern.fullmatch(itype):
            raise row.fail(f"instance_type '{itype}' is not a {cloud} instance type name")
        key = (region, itype)
        if key in seen:
            raise row.fail(f"duplicate of row {seen[key]} ({region}, {itype})",
                           "keep one row per (region, instance_type).")
        seen[key] = row.line
        vcpus = row.required_number("vcpus", minimum=0, exclusive_minimum=True)
        if vcpus != int(vcpus):
            raise row.fail(f"column 'vcpus' is {row.text('vcpus')}, not a whole number")
        price = row.required_number("price_usd_per_hour", minimum=0,
                                    maximum=MAX_PRICE_USD_PER_HOUR)
        spot = row.number("spot_price_usd_per_hour", minimum=0, maximum=MAX_PRICE_USD_PER_HOUR,
                          allow_empty=True)
        out.append(VmRow(
            cloud=cloud,
            region=region,
            instance_type=itype,
            vcpus=int(vcpus),
            memory_gib=row.required_number("memory_gib", minimum=0, exclusive_minimum=True),
            price_usd_per_hour=price,
            spot_price_usd_per_hour=spot,
            source=row.text("source"),
            source_date=row.date("source_date"),
        ))
    # One instance type has one shape everywhere; a disagreement is a parsing error.
    shapes: dict[str, tuple[int, float, str]] = {}
    for v in out:
        prev = shapes.setdefault(v.instance_type, (v.vcpus, v.memory_gib, v.region))
        if prev[:2] != (v.vcpus, v.memory_gib):
            raise CatalogError(
                f"{_display(path)}: {v.instance_type} has {v.vcpus} vCPU/{v.memory_gib:g} GiB in "
                f"{v.region} but {prev[0]} vCPU/{prev[1]:g} GiB in {prev[2]}.",
                "one instance type has one shape; fix the wrong row.")
    return out


def parse_regions(path: Path) -> dict[tuple[str, str], Region]:
    """Read and validate ``regions.csv``."""
    out: dict[tuple[str, str], Region] = {}
    lines: dict[tuple[str, str], int] = {}
    for row in _read_rows(path, REGION_COLUMNS):
        cloud = row.text("cloud")
        if cloud not in CLOUDS:
            raise row.fail(f"cloud '{cloud}' is not one of {list(CLOUDS)}")
        region = row.text("region")
        key = (cloud, region)
        if key in out:
            raise row.fail(f"duplicate of row {lines[key]} ({cloud}, {region})")
        continent = row.text("continent")
        if continent not in CONTINENTS:
            raise row.fail(f"continent '{continent}' is not one of {list(CONTINENTS)}")
        row.text("source")
        lines[key] = row.line
        out[key] = Region(
            cloud=cloud, region=region, display_name=row.text("display_name"),
            city=row.text("city"), country=row.text("country"), continent=continent,
            latitude_deg=row.required_number("latitude_deg", minimum=-90, maximum=90),
            longitude_deg=row.required_number("longitude_deg", minimum=-180, maximum=180),
        )
    return out


def parse_latency(path: Path) -> tuple[dict[tuple[str, str, str], float], dict[str, str]]:
    """Read and validate ``latency.csv`` (directional measured RTTs)."""
    out: dict[tuple[str, str, str], float] = {}
    lines: dict[tuple[str, str, str], int] = {}
    stats: dict[str, str] = {}
    for row in _read_rows(path, LATENCY_COLUMNS):
        cloud = row.text("cloud")
        if cloud not in CLOUDS:
            raise row.fail(f"cloud '{cloud}' is not one of {list(CLOUDS)}")
        key = (cloud, row.text("from_region"), row.text("to_region"))
        if key in out:
            raise row.fail(f"duplicate of row {lines[key]} ({', '.join(key)})")
        lines[key] = row.line
        out[key] = row.required_number("rtt_ms", minimum=0, maximum=MAX_RTT_MS)
        row.text("source")
        row.date("source_date")
        stats.setdefault(cloud, row.text("statistic").split(";")[0])
    return out, stats


@functools.lru_cache(maxsize=4)
def load_catalog(directory: Path = CATALOG_DIR) -> Catalog:
    """Read and validate every catalogue file under ``directory`` (cached per directory).

    Raises:
        CatalogError: A file is missing or malformed, or a priced region has no coordinates.
    """
    # Imported here: the per-cloud modules import this module.
    from optimizer.catalog import cloud_module

    vms: list[VmRow] = []
    for cloud in CLOUDS:
        mod = cloud_module(cloud)
        vms.extend(parse_vm_rows(directory / vm_file(cloud), cloud, mod.REGION_PATTERN,
                                 mod.INSTANCE_TYPE_PATTERN))
    regions = parse_regions(directory / "regions.csv")
    missing = sorted({(v.cloud, v.region) for v in vms} - set(regions))
    if missing:
        cloud, region = missing[0]
        raise CatalogError(
            f"{_display(directory / vm_file(cloud))}: region '{region}' is priced but has no "
            f"coordinates in regions.csv ({len(missing)} such region(s)).",
            f"add a row for {cloud},{region} to regions.csv.")
    latency, stats = parse_latency(directory / "latency.csv")
    vms.sort(key=lambda v: (CLOUDS.index(v.cloud), v.region, v.instance_type))
    from optimizer.catalog.carbon import load_carbon

    grid, power, measured = load_carbon(directory, vms)
    return Catalog(vms=tuple(vms), regions=regions, latency=latency, latency_statistic=stats,
                   grid=grid, power=power, aggregator=measured)


def close_matches(word: str, choices: Iterable[str], n: int = 3) -> list[str]:
    """Return up to ``n`` close matches of ``word`` (difflib, with a looser cutoff)."""
    return difflib.get_close_matches(word, list(choices), n=n, cutoff=0.5)


def did_you_mean(word: str, choices: Iterable[str]) -> str:
    """Return "did you mean 'x'?" or an empty string."""
    close = close_matches(word, choices, n=1)
    return f"did you mean '{close[0]}'?" if close else ""


# --- look-ups shared by the per-cloud modules (SkyPilot's *_impl pattern) ---------------------

def validate_region_impl(cat: Catalog, cloud: str, region: str) -> str:
    """Return ``region`` if ``cloud`` has it in the catalogue, else raise with did-you-mean."""
    known = sorted(set(cat.priced_regions(cloud)) | set(cat.located_regions(cloud)))
    if region in known:
        return region
    hint = did_you_mean(region, known) or f"{cloud} regions: {', '.join(known)}."
    raise CatalogError(f"unknown {cloud} region '{region}'.", hint)


def validate_instance_type_impl(cat: Catalog, cloud: str, instance_type: str,
                                region: str | None = None) -> str:
    """Return ``instance_type`` if priced (in ``region`` when given), else raise."""
    rows = cat.vms_of(cloud)
    types = sorted({v.instance_type for v in rows})
    if instance_type not in types:
        hint = did_you_mean(instance_type, types) or f"{cloud} types: {', '.join(types)}."
        raise CatalogError(f"unknown {cloud} instance type '{instance_type}'.", hint)
    if region is not None:
        here = sorted(v.instance_type for v in rows if v.region == region)
        if instance_type not in here:
            where = sorted({v.region for v in rows if v.instance_type == instance_type})
            raise CatalogError(
                f"{cloud} instance type '{instance_type}' has no price in {region}.",
                f"pick one of {', '.join(here[:8])}{' ...' if len(here) > 8 else ''} there, "
                f"or a region that has it ({', '.join(where[:5])}).")
    return instance_type


def find_vm_impl(cat: Catalog, cloud: str, instance_type: str, region: str) -> VmRow:
    """Return the catalogue row for (cloud, region, instance type), validating each name."""
    validate_region_impl(cat, cloud, region)
    validate_instance_type_impl(cat, cloud, instance_type, region)
    for v in cat.vms_of(cloud):
        if v.region == region and v.instance_type == instance_type:
            return v
    raise AssertionError("unreachable: validated above")


def get_hourly_cost_impl(cat: Catalog, cloud: str, instance_type: str, region: str) -> float:
    """Return the on-demand price in USD per hour."""
    return find_vm_impl(cat, cloud, instance_type, region).price_usd_per_hour


def get_vcpus_mem_impl(cat: Catalog, cloud: str, instance_type: str) -> tuple[int, float]:
    """Return (vCPUs, memory GiB) of an instance type."""
    validate_instance_type_impl(cat, cloud, instance_type)
    v = next(v for v in cat.vms_of(cloud) if v.instance_type == instance_type)
    return v.vcpus, v.memory_gib


def get_default_instance_type_impl(cat: Catalog, cloud: str, region: str, min_vcpus: float,
                                   min_memory_gib: float,
                                   family_prefix: tuple[str, ...]) -> str | None:
    """Return the cheapest general-purpose type of ``family_prefix`` meeting the minimum."""
    rows = [v for v in cat.vms_of(cloud) if v.region == region
            and v.instance_type.startswith(family_prefix)
            and v.vcpus >= min_vcpus and v.memory_gib >= min_memory_gib]
    if not rows:
        return None
    return min(rows, key=lambda v: (v.price_usd_per_hour, v.instance_type)).instance_type


@dataclass(frozen=True)
class CloudLookups:
    """The look-ups of one cloud, bound to its constants (each ``<cloud>_catalog`` exports them).

    Attributes:
        cloud: The cloud's name (one of :data:`CLOUDS`).
        default_families: Instance-type prefixes of the operator's "default general-purpose
            size" families; :meth:`get_default_instance_type` picks the cheapest of them meeting
            a minimum (SkyPilot's defaults per cloud).
    """

    cloud: str
    default_families: tuple[str, ...]

    def regions(self) -> list[str]:
        """Return the priced regions, sorted."""
        return load_catalog().priced_regions(self.cloud)

    def instance_types(self, region: str | None = None) -> list[str]:
        """Return the priced instance types (in ``region`` when given), sorted."""
        rows = load_catalog().vms_of(self.cloud)
        return sorted({v.instance_type for v in rows if region is None or v.region == region})

    def validate_region(self, region: str) -> str:
        """Return ``region`` if known, else raise :class:`CatalogError` with a did-you-mean."""
        return validate_region_impl(load_catalog(), self.cloud, region)

    def validate_instance_type(self, instance_type: str, region: str | None = None) -> str:
        """Return ``instance_type`` if priced (in ``region`` when given), else raise."""
        return validate_instance_type_impl(load_catalog(), self.cloud, instance_type, region)

    def get_hourly_cost(self, instance_type: str, region: str) -> float:
        """Return the on-demand Linux price in USD per hour."""
        return get_hourly_cost_impl(load_catalog(), self.cloud, instance_type, region)

    def get_vcpus_mem_from_instance_type(self, instance_type: str) -> tuple[int, float]:
        """Return (vCPUs, memory in GiB)."""
        return get_vcpus_mem_impl(load_catalog(), self.cloud, instance_type)

    def get_default_instance_type(self, region: str, min_vcpus: float,
                                  min_memory_gib: float) -> str | None:
        """Return the cheapest default-family type in ``region`` meeting the minimum, if any."""
        return get_default_instance_type_impl(load_catalog(), self.cloud, region, min_vcpus,
                                              min_memory_gib, self.default_families)


# --- writing (derivation and refresh scripts) ---------------------------------------------------

def write_csv(path: Path, columns: Sequence[str], rows: Iterable[Mapping[str, object]],
              check: Callable[[Path], object] | None = None) -> None:
    """Write a catalogue CSV atomically: to a temporary file, validated, then renamed.

    Args:
        path: Destination.
        columns: The header.
        rows: Mappings with exactly those keys.
        check: Called on the temporary file before it replaces ``path``; it raises to refuse.
    """
    def write(tmp: Path) -> None:
        with open(tmp, "w", newline="", encoding="utf-8") as fh:
            writer = csv.DictWriter(fh, fieldnames=list(columns), lineterminator="\n")
            writer.writeheader()
            for row in rows:
                writer.writerow(row)
        if check is not None:
            check(tmp)

    write_atomic_with(path, write, 0o644)  # catalogue files are ordinary data
