"""Rebuild ``vms_gcp.csv`` from the Cloud Billing Catalog API (needs an API key).

Source: ``https://cloudbilling.googleapis.com/v1/services/6F81-5844-456A/skus?key=KEY``
(Compute Engine), paged by ``nextPageToken``. GCP prices a VM as vCPUs x the series' core price
plus GiB x its RAM price; each SKU has ``description`` ("E2 Instance Core running in Seoul"),
``category.resourceGroup`` (CPU/RAM), ``category.usageType`` (OnDemand/Preemptible),
``serviceRegions`` and ``pricingInfo[0].pricingExpression.tieredRates[].unitPrice`` (``units`` +
``nanos`` USD). Custom, sole-tenant, commitment and premium SKUs are skipped. Shapes (vCPUs, GiB)
come from the current file. Preemptible (spot) prices fill the spot column.

Run: ``GCP_API_KEY=... python -m optimizer.refresh.gcp [--regions ...] [--skus-file FILE]``
(``--skus-file`` reads a saved ``{"skus": [...]}`` answer instead of the API).
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

from optimizer.refresh.common import (
    MAX_PAGES,
    PriceRow,
    RefreshError,
    Shape,
    base_parser,
    get_json,
    run,
)

CLOUD = "gcp"
SERVICE = "6F81-5844-456A"  # Compute Engine
API = f"https://cloudbilling.googleapis.com/v1/services/{SERVICE}/skus"
# Series -> the description prefix of its per-core and per-GiB SKUs.
SERIES = {"e2": "E2 Instance", "n2": "N2 Instance", "n2d": "N2D AMD Instance",
          "c2": "Compute optimized"}
SKIP = ("custom", "sole tenancy", "premium", "commitment", "reserved", "extended")


def unit_price(sku: Mapping[str, Any]) -> float:
    """Return the first-tier USD unit price of a SKU."""
    try:
        rates = sku["pricingInfo"][0]["pricingExpression"]["tieredRates"]
        first = min(rates, key=lambda r: float(r.get("startUsageAmount", 0)))
        money = first["unitPrice"]
        if money.get("currencyCode", "USD") != "USD":
            raise RefreshError(f"gcp: SKU {sku.get('skuId')} is priced in "
                               f"{money['currencyCode']}; not written.", "query in USD.")
        return int(money.get("units", 0)) + int(money.get("nanos", 0)) / 1e9
    except (KeyError, IndexError, TypeError, ValueError):
        raise RefreshError(f"gcp: SKU {sku.get('skuId')} has no readable price; not written.",
                           "inspect the answer.") from None


def parse_skus(skus: Iterable[Mapping[str, Any]], regions: set[str], types: set[str],
               shapes: Mapping[str, Shape]) -> list[PriceRow]:
    """Return on-demand (and preemptible) prices of ``types`` in ``regions``."""
    # (series, usage, resource, region) -> (price, effectiveTime)
    unit: dict[tuple[str, str, str, str], tuple[float, str]] = {}
    for sku in skus:
        cat = sku.get("category", {})
        desc = str(sku.get("description", ""))
        if cat.get("resourceFamily") != "Compute" or any(s in desc.lower() for s in SKIP):
            continue
        usage, group = cat.get("usageType"), cat.get("resourceGroup")
        if usage not in ("OnDemand", "Preemptible") or group not in ("CPU", "RAM"):
            continue
        series = next((s for s, prefix in SERIES.items()
                       if desc.removeprefix("Spot Preemptible ").startswith(prefix + " ")), None)
        if series is None:
            continue
        when = str(sku.get("pricingInfo", [{}])[0].get("effectiveTime", ""))
        for region in sku.get("serviceRegions", []):
            if region in regions:
                key = (series, str(usage), str(group), region)
                price = unit_price(sku)
                if key in unit and abs(unit[key][0] - price) > 1e-12:
                    raise RefreshError(f"gcp {region}: two {usage} {group} prices for {series} "
                                       f"({unit[key][0]} and {price}); not written.",
                                       "inspect the answer; a filter may be missing.")
                unit[key] = (price, when)
    rows = []
    for region in sorted(regions):
        for itype in sorted(types):
            series = itype.split("-")[0]
            core = unit.get((series, "OnDemand", "CPU", region))
            ram = unit.get((series, "OnDemand", "RAM", region))
            if core is None or ram is None or itype not in shapes:
                continue  # reported as missing by the completeness check
            shape = shapes[itype]
            score = unit.get((series, "Preemptible", "CPU", region))
            sram = unit.get((series, "Preemptible", "RAM", region))
            spot = (round(shape.vcpus * score[0] + shape.memory_gib * sram[0], 6)
                    if score and sram else None)
            rows.append(PriceRow(
                cloud=CLOUD, region=region, instance_type=itype, vcpus=shape.vcpus,
                memory_gib=shape.memory_gib,
                price_usd_per_hour=round(shape.vcpus * core[0] + shape.memory_gib * ram[0], 6),
                spot_price_usd_per_hour=spot,
                source=f"Cloud Billing Catalog API services/{SERVICE}/skus "
                       f"(vCPUs x core + GiB x RAM; effectiveTime {core[1][:10]})",
                source_date=core[1][:10]))
    return rows


def fetch_skus(api_key: str, get: Callable[[str], Mapping[str, Any]] | None = None
               ) -> list[dict[str, Any]]:
    """Download every Compute Engine SKU, following ``nextPageToken``."""
    get = get or _http_get
    skus: list[dict[str, Any]] = []
    token = ""
    for _ in range(MAX_PAGES):
        page = get(f"{API}?key={api_key}" + (f"&pageToken={token}" if token else ""))
        if not isinstance(page.get("skus"), list):
            raise RefreshError("gcp: a page has no 'skus' list; not written.", "retry later.")
        skus.extend(page["skus"])
        token = str(page.get("nextPageToken") or "")
        if not token:
            return skus
    raise RefreshError(f"gcp: more than {MAX_PAGES} pages; not written.", "retry later.")


def _http_get(url: str) -> dict[str, Any]:
    safe = url.split("?")[0]  # never print the API key
    return get_json(url, lambda exc: RefreshError(
        f"gcp: {safe} failed ({type(exc).__name__}); not written.",
        "check the API key and retry."))


def main(argv: list[str] | None = None,
         get: Callable[[str], Mapping[str, Any]] | None = None) -> int:
    """Refresh ``vms_gcp.csv``; return the exit code."""
    parser = base_parser(CLOUD, __doc__.splitlines()[0])
    parser.add_argument("--skus-file", type=Path, help="read a saved {'skus': [...]} answer")
    args = parser.parse_args(argv)

    def rows(regions: set[str], types: set[str], shapes: Mapping[str, Shape]) -> list[PriceRow]:
        if args.skus_file is not None:
            try:
                skus = list(json.loads(args.skus_file.read_text(encoding="utf-8"))["skus"])
            except (OSError, ValueError, KeyError) as exc:
                raise RefreshError(f"gcp: cannot read {args.skus_file} ({exc}); not written.",
                                   "save the API's answer there first.") from None
        else:
            key = os.environ.get("GCP_API_KEY", "")
            if not key:
                raise RefreshError("gcp: the Cloud Billing Catalog API needs an API key; "
                                   "GCP_API_KEY is not set.",
                                   "create a key in a GCP project with the Cloud Billing API "
                                   "enabled and export GCP_API_KEY, or use --skus-file.")
            skus = fetch_skus(key, get)
        return parse_skus(skus, regions, types, shapes)

    return run(CLOUD, args, rows)


if __name__ == "__main__":
    sys.exit(main())
