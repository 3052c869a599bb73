"""Derive the project's catalogue files from the shared facts snapshot (``../shared/data``).

Run once when the snapshot changes (``python -m optimizer.catalog.derive ../shared/data``). It
renames columns to carry their units, splits VM prices into one file per cloud (so that each
cloud's refresh script rewrites only its own file), keeps every row's source, and adds the
source's data date where the source states one. It changes no value.
"""

from __future__ import annotations

import argparse
import csv
import sys
from pathlib import Path

from optimizer.catalog.common import (
    CATALOG_DIR,
    LATENCY_COLUMNS,
    REGION_COLUMNS,
    VM_COLUMNS,
    write_csv,
)

CLOUD_ORDER = ("aws", "gcp", "azure")
# Dates the sources state (see ../shared/data/README.md); blank = the source states none.
KARPENTER_DATE = "2023-12-18"  # "generated at 2023-12-18T14:34:50Z" in the karpenter file
AZURE_LATENCY_DATE = "2026-07-30"  # "dataset taken on July 30, 2026" in the Azure article
REGION_SOURCE = (
    "general knowledge (approximate metro-area coordinates, not fetched; "
    "see shared/data/README.md section 2)"
)


def _read(path: Path) -> list[dict[str, str]]:
    with path.open(newline="", encoding="utf-8") as fh:
        return list(csv.DictReader(fh))


def derive(shared: Path, out: Path = CATALOG_DIR) -> dict[str, int]:
    """Write the catalogue files under ``out`` from the snapshot in ``shared``.

    Returns:
        Rows written per file name.
    """
    counts: dict[str, int] = {}
    prices = _read(shared / "vm_prices.csv")
    for cloud in CLOUD_ORDER:
        rows = []
        for r in prices:
            if r["cloud"] != cloud:
                continue
            date = KARPENTER_DATE if r["source"].startswith("Azure/karpenter") else ""
            rows.append({
                "region": r["region"],
                "instance_type": r["instance_type"],
                "vcpus": r["vcpus"],
                "memory_gib": r["memory_gib"],
                "price_usd_per_hour": r["price_usd_per_hour"],
                "spot_price_usd_per_hour": r["spot_price_usd_per_hour"],
                "source": r["source"],
                "source_date": date,
            })
        rows.sort(key=lambda x: (x["region"], x["instance_type"]))
        name = f"vms_{cloud}.csv"
        write_csv(out / name, VM_COLUMNS, rows)
        counts[name] = len(rows)

    regions = [{
        "cloud": r["cloud"], "region": r["region"], "display_name": r["display_name"],
        "city": r["city"], "country": r["country"], "continent": r["continent"],
        "latitude_deg": r["latitude"], "longitude_deg": r["longitude"], "source": REGION_SOURCE,
    } for r in _read(shared / "regions.csv")]
    regions.sort(key=lambda x: (CLOUD_ORDER.index(x["cloud"]), x["region"]))
    write_csv(out / "regions.csv", REGION_COLUMNS, regions)
    counts["regions.csv"] = len(regions)

    latency = [{
        "cloud": r["cloud"], "from_region": r["from_region"], "to_region": r["to_region"],
        "rtt_ms": r["rtt_ms"], "statistic": r["statistic"], "source": r["source"],
        "source_date": AZURE_LATENCY_DATE if r["cloud"] == "azure" else "",
    } for r in _read(shared / "latency_ms.csv")]
    latency.sort(key=lambda x: (CLOUD_ORDER.index(x["cloud"]), x["from_region"], x["to_region"]))
    write_csv(out / "latency.csv", LATENCY_COLUMNS, latency)
    counts["latency.csv"] = len(latency)
    return counts


def main(argv: list[str] | None = None) -> int:
    """Command-line entry point."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("shared", type=Path, help="the snapshot folder (../shared/data)")
    args = parser.parse_args(argv)
    for name, n in derive(args.shared).items():
        print(f"{name}: {n} rows")
    return 0


if __name__ == "__main__":
    sys.exit(main())
