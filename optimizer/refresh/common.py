"""What every refresh script shares: the row type, the run, completeness checks and the write.

Each script states only how its provider is fetched and parsed; :func:`run` does the rest, and
never writes a partial file (:class:`RefreshError`, file untouched, when anything is missing,
ambiguous or invalid). See optimizer/catalog/README.md, "Refreshing prices".
"""

from __future__ import annotations

import argparse
import csv
import sys
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from fedcloud.core.errors import FedcloudError
from optimizer.catalog import cloud_module
from optimizer.catalog.common import (
    CATALOG_DIR,
    VM_COLUMNS,
    VmRow,
    parse_vm_rows,
    vm_file,
    write_csv,
)

HTTP_TIMEOUT_S = 60
MAX_PAGES = 10_000  # a paging loop that does not end is an API fault, not a large catalogue


class RefreshError(FedcloudError):
    """The provider's data is incomplete, ambiguous or invalid; nothing was written."""

    exit_code = 3


@dataclass(frozen=True)
class PriceRow(VmRow):
    """One refreshed row of ``cloud``'s ``vms_<cloud>.csv`` file (the catalogue's row type)."""

    def csv_dict(self) -> dict[str, str]:
        """Return the CSV form, ``VM_COLUMNS`` (no float noise; blank spot when unknown)."""
        d = asdict(self)
        d["memory_gib"] = f"{self.memory_gib:g}"
        d["price_usd_per_hour"] = _num(self.price_usd_per_hour)
        d["spot_price_usd_per_hour"] = ("" if self.spot_price_usd_per_hour is None
                                        else _num(self.spot_price_usd_per_hour))
        return {k: str(d[k]) for k in VM_COLUMNS}


def _num(x: float) -> str:
    return f"{x:.10f}".rstrip("0").rstrip(".")


@dataclass(frozen=True)
class Shape:
    """vCPUs and memory of an instance type (for APIs that price without saying the shape)."""

    vcpus: int
    memory_gib: float


def read_current(cloud: str, catalog_dir: Path = CATALOG_DIR) -> list[dict[str, str]]:
    """Return the rows of the current price file of ``cloud`` (validated)."""
    mod = cloud_module(cloud)
    parse_vm_rows(catalog_dir / vm_file(cloud), cloud, mod.REGION_PATTERN,
                  mod.INSTANCE_TYPE_PATTERN)
    with (catalog_dir / vm_file(cloud)).open(newline="", encoding="utf-8") as fh:
        return list(csv.DictReader(fh))


def shapes_of(current: Iterable[dict[str, str]]) -> dict[str, Shape]:
    """Return the shape of every instance type in the current file."""
    return {r["instance_type"]: Shape(int(float(r["vcpus"])), float(r["memory_gib"]))
            for r in current}


def check_complete(cloud: str, rows: Sequence[PriceRow], expected: set[tuple[str, str]],
                   allow_missing: bool) -> None:
    """Raise unless every expected (region, type) has a row and no row is duplicated."""
    got: dict[tuple[str, str], PriceRow] = {}
    for r in rows:
        key = (r.region, r.instance_type)
        if key in got and got[key] != r:
            raise RefreshError(
                f"{cloud}: two different prices for {r.instance_type} in {r.region} "
                f"({got[key].price_usd_per_hour} and {r.price_usd_per_hour}); not written.",
                "inspect the provider's answer; the parser's filters may need a new rule.")
        got[key] = r
    missing = sorted(expected - set(got))
    if missing and not allow_missing:
        shown = ", ".join(f"{t} in {g}" for g, t in missing[:5])
        raise RefreshError(
            f"{cloud}: the provider's data lacks {len(missing)} (region, type) pair(s) the "
            f"catalogue has ({shown}{' ...' if len(missing) > 5 else ''}); not written.",
            "retry (a page may have been cut short), or pass --allow-missing if the provider "
            "withdrew them.")


def merge_and_write(cloud: str, rows: Sequence[PriceRow], regions: set[str], types: set[str],
                    current: Sequence[dict[str, str]], catalog_dir: Path = CATALOG_DIR) -> Path:
    """Replace the refreshed (region, type) rows, keep the others, validate and write atomically.

    Returns:
        The path written.

    Raises:
        RefreshError: The merged file fails the catalogue's validation (nothing written).
    """
    kept = [r for r in current if not (r["region"] in regions and r["instance_type"] in types)]
    new = [r.csv_dict() for r in rows if r.region in regions and r.instance_type in types]
    merged = sorted(kept + new, key=lambda r: (r["region"], r["instance_type"]))
    mod = cloud_module(cloud)
    path = catalog_dir / vm_file(cloud)

    def validate(tmp: Path) -> None:
        try:
            parse_vm_rows(tmp, cloud, mod.REGION_PATTERN, mod.INSTANCE_TYPE_PATTERN)
        except FedcloudError as exc:
            raise RefreshError(f"{cloud}: the refreshed file would be invalid ({exc.message}); "
                               "not written.", "inspect the provider's answer.") from None

    write_csv(path, VM_COLUMNS, merged, check=validate)
    return path


def base_parser(cloud: str, doc: str) -> argparse.ArgumentParser:
    """Return the options every refresh script takes."""
    p = argparse.ArgumentParser(prog=f"python -m optimizer.refresh.{cloud}", description=doc)
    p.add_argument("--regions", help="comma-separated regions (default: those in the file)")
    p.add_argument("--types", help="comma-separated instance types (default: those in the file)")
    p.add_argument("--catalog-dir", type=Path, default=CATALOG_DIR,
                   help="directory holding vms_<cloud>.csv (default: the project's catalogue)")
    p.add_argument("--allow-missing", action="store_true",
                   help="write even if the provider no longer lists some (region, type) pairs")
    return p


def selection(args: argparse.Namespace, current: Sequence[dict[str, str]]
              ) -> tuple[set[str], set[str], set[tuple[str, str]]]:
    """Return the regions, types and expected (region, type) pairs to refresh."""
    regions = set(args.regions.split(",")) if args.regions else {r["region"] for r in current}
    types = set(args.types.split(",")) if args.types else {r["instance_type"] for r in current}
    expected = {(r["region"], r["instance_type"]) for r in current
                if r["region"] in regions and r["instance_type"] in types}
    return regions, types, expected


def get_json(url: str, error: Callable[[Exception], RefreshError]) -> dict[str, Any]:
    """GET ``url`` as a JSON object.

    Args:
        url: The address.
        error: Builds the error to raise from the request's or the JSON decoder's exception (the
            caller words it: which cloud and region, what to do).

    Raises:
        RefreshError: ``error(exc)``, when the request fails or the answer is not JSON.
    """
    import requests

    try:
        resp = requests.get(url, timeout=HTTP_TIMEOUT_S)
        resp.raise_for_status()
        return dict(resp.json())
    except (requests.RequestException, ValueError) as exc:
        raise error(exc) from None


# fetch_rows(regions, types, shapes of the current file's types) -> the provider's rows
RowsFetcher = Callable[[set[str], set[str], Mapping[str, Shape]], list[PriceRow]]


def run(cloud: str, args: argparse.Namespace, fetch_rows: RowsFetcher) -> int:
    """Refresh ``vms_<cloud>.csv`` with fresh prices, or refuse with nothing written.

    Reads and validates the current file, selects the (region, type) pairs to refresh (see
    :func:`selection`), checks the provider's answer is complete, then merges and writes it.

    Args:
        cloud: The cloud.
        args: The parsed options of :func:`base_parser` (and the script's own).
        fetch_rows: ``fetch_rows(regions, types, shapes)`` returns the provider's rows; ``shapes``
            are those of the current file's types (:func:`shapes_of`).

    Returns:
        The exit code: 0, or the error's code after printing it (nothing written).
    """
    try:
        current = read_current(cloud, args.catalog_dir)
        regions, types, expected = selection(args, current)
        rows = fetch_rows(regions, types, shapes_of(current))
        check_complete(cloud, rows, expected, args.allow_missing)
        path = merge_and_write(cloud, rows, regions, types, current, args.catalog_dir)
    except FedcloudError as exc:  # RefreshError, or a CatalogError in the current file
        print(f"refresh: error: {exc}", file=sys.stderr)
        return exc.exit_code
    print(f"{path}: {len(rows)} rows refreshed in {len(regions)} region(s)")
    return 0
