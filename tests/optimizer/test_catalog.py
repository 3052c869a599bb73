"""The catalogue's data contract: the shipped files load; broken files fail naming file and row."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from fedcloud.core.errors import CatalogError
from optimizer import catalog
from optimizer.catalog import CATALOG_DIR, CLOUDS, load_catalog
from optimizer.catalog.common import vm_file


def test_shipped_catalogue_loads_with_expected_coverage() -> None:
    cat = load_catalog()
    counts = {c: len(cat.vms_of(c)) for c in CLOUDS}
    assert counts == {"aws": 520, "gcp": 572, "azure": 364}
    assert len(cat.regions) == 90
    assert len(cat.latency) == 3303
    # every priced region has coordinates (the loader's cross-file check)
    assert {(v.cloud, v.region) for v in cat.vms} <= set(cat.regions)


@pytest.mark.parametrize(("cloud", "itype", "region", "price"), [
    ("aws", "c5.large", "us-east-1", 0.085),            # list price quoted in the data README
    ("gcp", "e2-standard-2", "us-central1", 0.06701),   # idem
    ("azure", "Standard_D2s_v5", "koreacentral", 0.118),  # karpenter snapshot 2023-12-18
])
def test_dispatcher_prices(cloud: str, itype: str, region: str, price: float) -> None:
    assert catalog.get_hourly_cost(cloud, itype, region) == pytest.approx(price)
    assert isinstance(catalog.get_hourly_cost(cloud, itype, region), float)


def test_every_cloud_module_has_the_same_functions() -> None:
    names = {"regions", "instance_types", "validate_region", "validate_instance_type",
             "get_hourly_cost", "get_vcpus_mem_from_instance_type", "get_default_instance_type"}
    for cloud in CLOUDS:
        mod = catalog.cloud_module(cloud)
        assert names <= set(dir(mod)), cloud
        assert cloud == mod.CLOUD


@pytest.mark.parametrize(("call", "match"), [
    (lambda: catalog.validate_cloud("asw"), "unknown cloud 'asw'.*did you mean 'aws'"),
    (lambda: catalog.validate_region("aws", "us-east-9"), "unknown aws region.*did you mean"),
    (lambda: catalog.validate_instance_type("gcp", "e2-standrd-2"),
     "unknown gcp instance type.*did you mean 'e2-standard-2'"),
    (lambda: catalog.validate_instance_type("gcp", "c2-standard-4", "europe-west8"),
     "has no price in europe-west8"),
])
def test_unknown_names_get_did_you_mean(call: object, match: str) -> None:
    with pytest.raises(CatalogError, match=match):
        call()  # type: ignore[operator]


def test_default_instance_type_is_cheapest_general_purpose() -> None:
    assert catalog.get_default_instance_type("aws", "us-east-1", 2, 4) in ("m5.large", "m6i.large")
    assert catalog.get_vcpus_mem_from_instance_type("azure", "Standard_B2s") == (2, 4.0)


@pytest.fixture
def catdir(tmp_path: Path) -> Path:
    for f in CATALOG_DIR.glob("*.csv"):
        shutil.copy(f, tmp_path / f.name)
    return tmp_path


def _edit(path: Path, old: str, new: str) -> None:
    text = path.read_text()
    assert old in text
    path.write_text(text.replace(old, new, 1))


@pytest.mark.parametrize(("file", "old", "new", "match"), [
    # a negative price
    (vm_file("aws"), "af-south-1,c5.2xlarge,8,16,0.456,", "af-south-1,c5.2xlarge,8,16,-0.456,",
     r"vms_aws.csv row 2: column 'price_usd_per_hour' is -0.456; it must be >= 0"),
    # a price in the wrong unit (per month)
    (vm_file("aws"), "af-south-1,c5.2xlarge,8,16,0.456,", "af-south-1,c5.2xlarge,8,16,332.9,",
     r"row 2: .*must be <= 100 \(wrong unit\?\)"),
    # not a number
    (vm_file("gcp"), "africa-south1,e2-standard-16,16,64,", "africa-south1,e2-standard-16,16,lots,",
     r"vms_gcp.csv row 2: column 'memory_gib' is 'lots', not a number"),
    # a header without units
    (vm_file("azure"), "memory_gib,", "memory,", r"vms_azure.csv row 1: header does not match"),
    # a region code of another cloud
    (vm_file("azure"), "australiaeast,Standard_B2ms", "australia-east1,Standard_B2ms",
     r"vms_azure.csv row 2: region 'australia-east1' is not a azure region code"),
    # a latitude out of range
    ("regions.csv", "Cape Town,South Africa,Africa,-33.9,", "Cape Town,South Africa,Africa,-133.9,",
     r"regions.csv row 2: column 'latitude_deg' is -133.9; it must be >= -90"),
])
def test_broken_files_name_file_row_and_problem(catdir: Path, file: str, old: str, new: str,
                                                match: str) -> None:
    _edit(catdir / file, old, new)
    with pytest.raises(CatalogError, match=match):
        load_catalog(catdir)


def test_bad_date(catdir: Path) -> None:
    _edit(catdir / "latency.csv", ",2026-07-30\n", ",30/07/2026\n")
    with pytest.raises(CatalogError, match=r"latency.csv row \d+: column 'source_date' is "
                       r"'30/07/2026', not a YYYY-MM-DD date"):
        load_catalog(catdir)


def test_duplicate_row_names_the_first(catdir: Path) -> None:
    path = catdir / vm_file("aws")
    lines = path.read_text().splitlines(keepends=True)
    path.write_text("".join([*lines[:3], lines[2], *lines[3:]]))
    with pytest.raises(CatalogError, match=r"vms_aws.csv row 4: duplicate of row 3"):
        load_catalog(catdir)


def test_priced_region_without_coordinates(catdir: Path) -> None:
    path = catdir / "regions.csv"
    path.write_text("".join(line for line in path.read_text().splitlines(keepends=True)
                            if not line.startswith("gcp,me-central1,")))
    with pytest.raises(CatalogError, match=r"region 'me-central1' is priced but has no "
                       r"coordinates.*add a row for gcp,me-central1"):
        load_catalog(catdir)


def test_missing_file(catdir: Path) -> None:
    (catdir / "latency.csv").unlink()
    with pytest.raises(CatalogError, match=r"latency.csv: catalogue file not found"):
        load_catalog(catdir)
