"""Rebuild ``vms_aws.csv`` from the AWS Price List bulk API (public, no account needed).

Source: one offer file per region,
``https://pricing.us-east-1.amazonaws.com/offers/v1.0/aws/AmazonEC2/current/<region>/index.json``
(JSON: ``products`` keyed by SKU with ``attributes``; ``terms.OnDemand[sku]`` with
``priceDimensions[].pricePerUnit.USD`` per ``Hrs``). A row is the on-demand price of a Linux,
shared-tenancy, no-pre-installed-software, ``capacitystatus = Used`` instance. The bulk files
carry no spot prices, so the spot column is left blank (as "not given by the source").

Run: ``python -m optimizer.refresh.aws [--regions us-east-1,...] [--offers-dir DIR]``
(``--offers-dir`` reads ``<region>.json`` files saved earlier instead of downloading).
"""

from __future__ import annotations

import json
import re
import sys
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from optimizer.refresh.common import PriceRow, RefreshError, Shape, base_parser, get_json, run

CLOUD = "aws"
OFFER_URL = ("https://pricing.us-east-1.amazonaws.com/offers/v1.0/aws/AmazonEC2/current/"
             "{region}/index.json")
# The attribute values of a plain on-demand Linux instance.
WANT = {"operatingSystem": "Linux", "tenancy": "Shared", "preInstalledSw": "NA",
        "capacitystatus": "Used"}
_MEMORY = re.compile(r"^([0-9.,]+) GiB$")


def parse_offer(doc: Mapping[str, Any], region: str, types: set[str]) -> list[PriceRow]:
    """Return the on-demand Linux prices of ``types`` in one region's offer file.

    Raises:
        RefreshError: The document is not an EC2 offer file for ``region``, or a wanted price
            is malformed.
    """
    if doc.get("offerCode") != "AmazonEC2" or "products" not in doc or "terms" not in doc:
        raise RefreshError(f"aws {region}: not an AmazonEC2 offer file; not written.",
                           "check the URL or the saved file.")
    date = str(doc.get("publicationDate", ""))[:10]
    source = f"{OFFER_URL.format(region=region)} (publicationDate {doc.get('publicationDate')})"
    on_demand = doc["terms"].get("OnDemand", {})
    rows = []
    for sku, product in doc["products"].items():
        attrs = product.get("attributes", {})
        if product.get("productFamily") != "Compute Instance":
            continue
        if attrs.get("instanceType") not in types:
            continue
        if any(attrs.get(k) != v for k, v in WANT.items()):
            continue
        if attrs.get("licenseModel", "No License required") != "No License required":
            continue
        if attrs.get("regionCode", region) != region:
            continue
        itype = attrs["instanceType"]
        mem = _MEMORY.match(attrs.get("memory", ""))
        if not mem:
            raise RefreshError(f"aws {region}: {itype} has memory '{attrs.get('memory')}', not "
                               "'<n> GiB'; not written.", "update the parser.")
        prices = [dim for term in on_demand.get(sku, {}).values()
                  for dim in term.get("priceDimensions", {}).values() if dim.get("unit") == "Hrs"]
        if len(prices) != 1:
            raise RefreshError(f"aws {region}: {itype} (SKU {sku}) has {len(prices)} hourly "
                               "on-demand prices, expected 1; not written.",
                               "inspect the offer file.")
        try:
            price = float(prices[0]["pricePerUnit"]["USD"])
        except (KeyError, ValueError):
            raise RefreshError(f"aws {region}: {itype} has no USD price; not written.",
                               "inspect the offer file.") from None
        rows.append(PriceRow(cloud=CLOUD, region=region, instance_type=itype,
                             vcpus=int(attrs["vcpu"]),
                             memory_gib=float(mem.group(1).replace(",", "")),
                             price_usd_per_hour=price, spot_price_usd_per_hour=None,
                             source=source, source_date=date))
    return rows


def fetch_offer(region: str) -> dict[str, Any]:
    """Download one region's offer file (tens of MB)."""
    return get_json(OFFER_URL.format(region=region), lambda exc: RefreshError(
        f"aws {region}: download failed ({exc}); not written.",
        "retry later, or use --offers-dir with saved files."))


def main(argv: list[str] | None = None,
         fetch: Callable[[str], dict[str, Any]] | None = None) -> int:
    """Refresh ``vms_aws.csv``; return the exit code."""
    parser = base_parser(CLOUD, __doc__.splitlines()[0])
    parser.add_argument("--offers-dir", type=Path,
                        help="read <region>.json offer files from this folder")
    args = parser.parse_args(argv)

    def load(region: str) -> dict[str, Any]:
        if args.offers_dir is not None:
            path = args.offers_dir / f"{region}.json"
            try:
                return dict(json.loads(path.read_text(encoding="utf-8")))
            except (OSError, ValueError) as exc:
                raise RefreshError(f"aws {region}: cannot read {path} ({exc}); not "
                                   "written.", "save the offer file there first.") from None
        return (fetch or fetch_offer)(region)

    def rows(regions: set[str], types: set[str], shapes: Mapping[str, Shape]) -> list[PriceRow]:
        # The offer files state each type's shape: the current file's shapes are not needed.
        return [r for region in sorted(regions) for r in parse_offer(load(region), region, types)]

    return run(CLOUD, args, rows)


if __name__ == "__main__":
    sys.exit(main())
