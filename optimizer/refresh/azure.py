"""Rebuild ``vms_azure.csv`` from the Azure Retail Prices API (public, no account needed).

Linux on-demand and spot meters of ``prices.azure.com/api/retail/prices``, one region at a time;
vCPU and memory come from the current file. Run: ``python -m optimizer.refresh.azure
[--regions koreacentral,...] [--pages-dir DIR]``. See optimizer/catalog/README.md, "Refreshing
prices".
"""

from __future__ import annotations

import json
import sys
import urllib.parse
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

CLOUD = "azure"
API = "https://prices.azure.com/api/retail/prices"
SOURCE = "Azure Retail Prices API (prices.azure.com/api/retail/prices)"


def region_url(region: str) -> str:
    """Return the first page's URL for one region."""
    flt = (f"serviceName eq 'Virtual Machines' and priceType eq 'Consumption' and "
           f"armRegionName eq '{region}'")
    return f"{API}?$filter={urllib.parse.quote(flt)}"


def fetch_pages(first_url: str, get: Callable[[str], Mapping[str, Any]]) -> list[dict[str, Any]]:
    """Follow ``NextPageLink`` from ``first_url``; return every item.

    Raises:
        RefreshError: A page fails or is malformed, or paging does not end.
    """
    items: list[dict[str, Any]] = []
    url: str | None = first_url
    for _ in range(MAX_PAGES):
        if not url:
            return items
        page = get(url)
        if not isinstance(page.get("Items"), list):
            raise RefreshError(f"azure: page {url} has no 'Items' list; not written.",
                               "retry; the API may have failed mid-way.")
        items.extend(page["Items"])
        url = page.get("NextPageLink") or None
    raise RefreshError(f"azure: more than {MAX_PAGES} pages; not written.", "retry later.")


def parse_items(items: Iterable[Mapping[str, Any]], region: str, types: set[str],
                shapes: Mapping[str, Shape]) -> list[PriceRow]:
    """Return the Linux on-demand (and spot) prices of ``types`` in ``region``."""
    demand: dict[str, tuple[str, float]] = {}
    spot: dict[str, tuple[str, float]] = {}
    for it in items:
        sku = it.get("armSkuName")
        if it.get("armRegionName") != region or sku not in types:
            continue
        product, name = str(it.get("productName", "")), str(it.get("skuName", ""))
        if product.endswith((" Windows", " Win")) or "Cloud Services" in product:
            continue
        if name.endswith(" Low Priority") or it.get("type", "Consumption") != "Consumption":
            continue
        if it.get("currencyCode", "USD") != "USD" or it.get("unitOfMeasure") != "1 Hour":
            raise RefreshError(f"azure {region}: {sku} priced in {it.get('currencyCode')} per "
                               f"{it.get('unitOfMeasure')}; not written.",
                               "query in USD per hour.")
        price = float(it["unitPrice"])
        if price <= 0:
            continue
        # Several meters of one SKU: the most recent effectiveStartDate is the current price.
        when = str(it.get("effectiveStartDate", ""))
        target = spot if name.endswith(" Spot") else demand
        if sku not in target or when > target[sku][0]:
            target[sku] = (when, price)
    rows = []
    for sku, (when, price) in sorted(demand.items()):
        if sku not in shapes:
            raise RefreshError(f"azure {region}: no shape known for {sku}; not written.",
                               f"add a row for {sku} with its vCPUs and memory first.")
        rows.append(PriceRow(cloud=CLOUD, region=region, instance_type=sku,
                             vcpus=shapes[sku].vcpus,
                             memory_gib=shapes[sku].memory_gib, price_usd_per_hour=price,
                             spot_price_usd_per_hour=spot[sku][1] if sku in spot else None,
                             source=f"{SOURCE} (effectiveStartDate {when[:10]})",
                             source_date=when[:10]))
    return rows


def http_get(url: str) -> dict[str, Any]:
    """GET one page as JSON."""
    return get_json(url, lambda exc: RefreshError(f"azure: {url} failed ({exc}); not written.",
                                                  "retry later."))


def main(argv: list[str] | None = None,
         get: Callable[[str], Mapping[str, Any]] | None = None) -> int:
    """Refresh ``vms_azure.csv``; return the exit code."""
    parser = base_parser(CLOUD, __doc__.splitlines()[0])
    parser.add_argument("--pages-dir", type=Path,
                        help="read <region>-1.json, <region>-2.json ... instead of the API")
    args = parser.parse_args(argv)

    def rows(regions: set[str], types: set[str], shapes: Mapping[str, Shape]) -> list[PriceRow]:
        out: list[PriceRow] = []
        for region in sorted(regions):
            if args.pages_dir is not None:
                items = _saved_pages(args.pages_dir, region)
            else:
                items = fetch_pages(region_url(region), get or http_get)
            out.extend(parse_items(items, region, types, shapes))
        return out

    return run(CLOUD, args, rows)


def _saved_pages(folder: Path, region: str) -> list[dict[str, Any]]:
    """Read saved pages ``<region>-1.json`` ... following their NextPageLink chain."""
    pages = sorted(folder.glob(f"{region}-*.json"),
                   key=lambda p: int(p.stem.rsplit("-", 1)[1]) if p.stem.rsplit("-", 1)[1]
                   .isdigit() else 0)
    if not pages:
        raise RefreshError(f"azure {region}: no saved pages in {folder}; not written.",
                           "save the API's pages there first.")
    by_url: dict[str, dict[str, Any]] = {}
    docs = [json.loads(p.read_text(encoding="utf-8")) for p in pages]
    for i, doc in enumerate(docs[1:], start=1):
        prev = docs[i - 1].get("NextPageLink")
        if prev:
            by_url[prev] = doc

    def get(url: str) -> Mapping[str, Any]:
        if url == "first":
            return dict(docs[0])
        if url not in by_url:
            raise RefreshError(f"azure {region}: saved pages end before {url}; not written.",
                               "save every page of the answer.")
        return by_url[url]

    return fetch_pages("first", get)


if __name__ == "__main__":
    sys.exit(main())
