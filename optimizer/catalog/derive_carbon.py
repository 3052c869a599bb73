"""Derive ``carbon_grid.csv`` and ``vm_power.csv`` from ``../shared/data/carbon`` (CCF facts).

Run when the facts change: ``python -m optimizer.catalog.derive_carbon ../shared/data/carbon``.
Grid factors t/kWh become kg/kWh; a priced region without a published factor takes the highest
factor published for its country (named in ``grid_basis``) or stays unknown. Rules and sources:
catalog/README.md, "Carbon".
"""

from __future__ import annotations

import argparse
import csv
import math
import statistics
import sys
from pathlib import Path

from fedcloud.core.errors import CatalogError
from optimizer.catalog.carbon import GRID_COLUMNS, POWER_COLUMNS, parse_grid, parse_power
from optimizer.catalog.common import CATALOG_DIR, CLOUDS, load_catalog, write_csv

CCF = "cloud-carbon-footprint/cloud-carbon-coefficients"
GRID_FILES = {
    "aws": ("grid_aws.csv", f"{CCF}@ae12c382:data/grid-emissions-factors-aws.csv"),
    "azure": ("grid_azure.csv", f"{CCF}@04b3e915:data/grid-emissions-factors-azure.csv"),
    "gcp": ("grid_gcp.csv", f"{CCF}@ae12c382:data/grid-emissions-factors-gcp.csv"),
}
WATTS_FILES = {"aws": ("cpu_watts_aws.csv", f"{CCF}@3dc5365f:output/coefficients-aws-use.csv"),
               "gcp": ("cpu_watts_gcp.csv", f"{CCF}@0b045386:output/coefficients-gcp-use.csv"),
               "azure": ("cpu_watts_azure.csv",
                         f"{CCF}@2ecb2f61:output/coefficients-azure-use.csv")}
FACTOR_COLUMN = "CO2e (metric ton/kWh)"
# Rows whose factor lost its leading "0." in the source: treated as unknown (then the country
# rule applies), not repaired.
MALFORMED = {("azure", "Finland Central"), ("azure", "Germany West Central")}
CCF_CONSTANTS = "CCF methodology constants (shared/data/carbon/README.md)"
PUE = {"aws": 1.135, "gcp": 1.1, "azure": 1.185}
GCP_PUE = {"us-east1": 1.102, "us-central1": 1.11, "us-west1": 1.095, "europe-west1": 1.08,
           "europe-west4": 1.09, "europe-north1": 1.09, "asia-east1": 1.13,
           "asia-southeast1": 1.14, "southamerica-east1": 1.09}
# CCF's per-cloud average when the microarchitecture is not in the cloud's table (W per vCPU).
DEFAULT_WATTS = {"aws": (0.74, 3.5), "azure": (0.78, 3.76)}
# Family prefix -> CPU microarchitectures (as named in the cloud's watts table; empty = the CCF
# average), with the public instance documentation they come from.
FAMILIES: dict[str, list[tuple[str, tuple[str, ...], str]]] = {
    "aws": [("t3.", ("Sky Lake", "Cascade Lake"), "AWS T3: Xeon Platinum 8000 (Skylake-SP or "
             "Cascade Lake)"),
            ("m5.", ("Sky Lake", "Cascade Lake"), "AWS M5: Skylake or Cascade Lake"),
            ("c5.", ("Sky Lake", "Cascade Lake"), "AWS C5: Skylake or Cascade Lake"),
            ("r5.", ("Sky Lake", "Cascade Lake"), "AWS R5: Skylake or Cascade Lake"),
            ("m6i.", (), "AWS M6i: Ice Lake, not in CCF's table: CCF average"),
            ("c6i.", (), "AWS C6i: Ice Lake, not in CCF's table: CCF average")],
    "gcp": [("e2-", ("Skylake", "Broadwell", "Haswell", "Cascade Lake", "EPYC 2nd Gen",
                     "EPYC 3rd Gen"), "GCP E2: any of these platforms (mean, as CCF does)"),
            ("n2d-", ("EPYC 2nd Gen", "EPYC 3rd Gen"), "GCP N2D: AMD EPYC Rome or Milan"),
            ("n2-", ("Cascade Lake",), "GCP N2: Cascade Lake or Ice Lake (Ice Lake not in "
             "CCF's table)"),
            ("c2-", ("Cascade Lake",), "GCP C2: Cascade Lake")],
    "azure": [("Standard_B", (), "Azure B-series: mixed hosts: CCF average"),
              ("Standard_D", (), "Azure Dsv5: Ice Lake, not in CCF's table: CCF average"),
              ("Standard_E", (), "Azure Esv5: Ice Lake, not in CCF's table: CCF average"),
              ("Standard_F", ("Cascade Lake", "Skylake"), "Azure Fsv2: Cascade Lake or "
               "Skylake (Platinum 8272CL / 8168)")],
}
KNOWLEDGE = "general knowledge of the provider's documentation, not fetched"
AWS_GBPS = {"large": 0.75, "xlarge": 1.25, "2xlarge": 2.5, "4xlarge": 5.0}      # m5, c5, r5
AWS_6I_GBPS = {"large": 0.781, "xlarge": 1.562, "2xlarge": 3.125, "4xlarge": 6.25}
AWS_T3_GBPS = {"medium": 0.256, "large": 0.512, "xlarge": 1.024, "2xlarge": 2.048}
GCP_GBPS = {"e2": {2: 4, 4: 8, 8: 16, 16: 16}, "n2": {2: 10, 4: 10, 8: 16, 16: 32},
            "n2d": {2: 10, 4: 10, 8: 16, 16: 32}, "c2": {4: 10, 8: 16, 16: 32}}
AZURE_F_MBPS = {2: 875, 4: 1750, 8: 3500, 16: 7000}
FSV2_DOC = "changeworld/azure-docs.zh-tw:articles/virtual-machines/fsv2-series.md (2020-02-03)"


def _read(path: Path) -> list[tuple[int, dict[str, str]]]:
    try:
        with path.open(newline="", encoding="utf-8") as fh:
            return list(enumerate(csv.DictReader(fh), start=2))
    except FileNotFoundError:
        raise CatalogError(f"{path}: carbon facts file not found.",
                           "pass the folder that holds the CCF files "
                           "(../shared/data/carbon).") from None


def _number(path: Path, line: int, raw: str, what: str) -> float:
    try:
        value = float(raw)
    except ValueError:
        raise CatalogError(f"{path.name} row {line}: {what} is '{raw}', not a number.",
                           "correct the row in the carbon facts (shared/data/carbon).") from None
    if not math.isfinite(value) or value < 0:
        raise CatalogError(f"{path.name} row {line}: {what} is {raw}; it must be a finite "
                           "number >= 0.", "correct the row in the carbon facts.")
    return value


def published_factors(facts: Path) -> dict[tuple[str, str], tuple[float, str]]:
    """``(cloud, region code)`` -> (kg CO2e per kWh, source) as published (malformed: none)."""
    out: dict[tuple[str, str], tuple[float, str]] = {}
    for cloud, (name, source) in GRID_FILES.items():
        for line, row in _read(facts / name):
            region = row.get("Region") or ""
            if (cloud, region) in MALFORMED:
                continue
            t_per_kwh = _number(facts / name, line, row.get(FACTOR_COLUMN) or "", FACTOR_COLUMN)
            if t_per_kwh > 0.0015:
                raise CatalogError(f"{name} row {line}: {FACTOR_COLUMN} is {t_per_kwh:g}, "
                                   "above any grid's (wrong unit?).", "correct the row.")
            code = region.lower().replace(" ", "") if cloud == "azure" else region
            out[(cloud, code)] = (t_per_kwh * 1000.0, f"{source} ({row.get('Source', '')})")
    return out


def grid_rows(facts: Path) -> list[dict[str, object]]:
    """One row per priced region: its factor, or the country rule's, or unknown."""
    cat = load_catalog()
    published = published_factors(facts)
    by_country: dict[str, list[tuple[float, str, str]]] = {}
    for (cloud, region), (kg, src) in published.items():
        if (cloud, region) in cat.regions:
            by_country.setdefault(cat.regions[(cloud, region)].country, []).append(
                (kg, f"{cloud}:{region}", src))
    rows: list[dict[str, object]] = []
    for cloud in CLOUDS:
        for region in cat.priced_regions(cloud):
            pue = GCP_PUE.get(region, PUE[cloud]) if cloud == "gcp" else PUE[cloud]
            pue_src = CCF_CONSTANTS + (" (GCP by region)" if cloud == "gcp" and region in GCP_PUE
                                       else f" ({cloud} average)")
            row: dict[str, object] = {"cloud": cloud, "region": region, "pue": pue,
                                      "pue_source": pue_src}
            country = cat.regions[(cloud, region)].country
            if (cloud, region) in published:
                kg, src = published[(cloud, region)]
                row.update(grid_kgco2e_per_kwh=f"{kg:.6g}", grid_basis="published",
                           grid_source=src)
            elif by_country.get(country):
                kg, ref, src = max(by_country[country])
                row.update(grid_kgco2e_per_kwh=f"{kg:.6g}",
                           grid_basis=f"substituted: highest published in {country} ({ref})",
                           grid_source=src)
            else:
                row.update(grid_kgco2e_per_kwh="", grid_basis="unknown",
                           grid_source=f"no published factor for {country}")
            rows.append(row)
    return rows


def _watts(facts: Path, cloud: str, archs: tuple[str, ...]) -> tuple[float, float, str]:
    name, source = WATTS_FILES[cloud]
    table = {row["Architecture"]: (_number(facts / name, line, row["Min Watts"], "Min Watts"),
                                   _number(facts / name, line, row["Max Watts"], "Max Watts"))
             for line, row in _read(facts / name)}
    if not archs:
        lo, hi = DEFAULT_WATTS[cloud]
        return lo, hi, CCF_CONSTANTS + f" ({cloud} average)"
    missing = [a for a in archs if a not in table]
    if missing:
        raise CatalogError(f"{name}: no row for {missing[0]}.", "add it or change FAMILIES.")
    return (statistics.mean(table[a][0] for a in archs),
            statistics.mean(table[a][1] for a in archs), f"mean of {source} rows")


def _network(cloud: str, itype: str, vcpus: int) -> tuple[float, str]:
    if cloud == "aws":
        family, size = itype.split(".")
        table = AWS_T3_GBPS if family == "t3" else AWS_6I_GBPS if family.endswith("6i") \
            else AWS_GBPS
        return table[size], f"AWS EC2 baseline bandwidth ({KNOWLEDGE})"
    if cloud == "gcp":
        return (float(GCP_GBPS[itype.split("-")[0]][vcpus]),
                f"GCP default per-VM egress bandwidth ({KNOWLEDGE})")
    if itype.startswith("Standard_F"):
        return AZURE_F_MBPS[vcpus] / 1000.0, FSV2_DOC
    if itype.startswith("Standard_B"):
        return (AZURE_F_MBPS[vcpus] / 1000.0, "not published for B-series "
                "(MicrosoftDocs/azure-docs#8765): the lowest published Azure figure at this "
                f"vCPU count (Standard_F{vcpus}s_v2, {FSV2_DOC})")
    return 12.5, f"Azure Dsv5/Esv5 expected bandwidth, 12500 Mbps ({KNOWLEDGE})"


def power_rows(facts: Path) -> list[dict[str, object]]:
    """One row per priced instance type: CCF watts per vCPU and network bandwidth."""
    cat = load_catalog()
    rows: list[dict[str, object]] = []
    for cloud in CLOUDS:
        shapes = {v.instance_type: v.vcpus for v in cat.vms_of(cloud)}
        for itype in sorted(shapes):
            _, archs, doc = next(f for f in FAMILIES[cloud] if itype.startswith(f[0]))
            lo, hi, src = _watts(facts, cloud, archs)
            gbps, net_src = _network(cloud, itype, shapes[itype])
            rows.append({"cloud": cloud, "instance_type": itype,
                         "architectures": "; ".join(archs) or "CCF average",
                         "min_watts_per_vcpu": f"{lo:.6g}", "max_watts_per_vcpu": f"{hi:.6g}",
                         "watts_source": f"{src}; {doc}", "network_gbps": f"{gbps:g}",
                         "network_source": net_src})
    return rows


def derive(facts: Path, out: Path = CATALOG_DIR) -> dict[str, int]:
    """Write both files under ``out`` (validated before they replace the old ones)."""
    grid, power = grid_rows(facts), power_rows(facts)
    write_csv(out / "carbon_grid.csv", GRID_COLUMNS, grid, check=parse_grid)
    write_csv(out / "vm_power.csv", POWER_COLUMNS, power, check=parse_power)
    return {"carbon_grid.csv": len(grid), "vm_power.csv": len(power)}


def main(argv: list[str] | None = None) -> int:
    """Command-line entry point."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("facts", type=Path, help="the CCF facts folder (../shared/data/carbon)")
    args = parser.parse_args(argv)
    try:
        for name, n in derive(args.facts).items():
            print(f"{name}: {n} rows")
    except CatalogError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
