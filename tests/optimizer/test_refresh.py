"""Refresh scripts: parse the providers' formats, and refuse to write anything partial."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import pytest

from optimizer.catalog import CATALOG_DIR, load_catalog
from optimizer.catalog.common import vm_file
from optimizer.refresh import aws, azure, gcp
from optimizer.refresh.common import RefreshError, Shape

DATA = Path(__file__).resolve().parents[1] / "data" / "refresh"


@pytest.fixture
def catdir(tmp_path: Path) -> Path:
    out = tmp_path / "catalog"
    out.mkdir()
    for f in CATALOG_DIR.glob("*.csv"):
        shutil.copy(f, out / f.name)
    return out


def _prices(catdir: Path, cloud: str) -> dict[tuple[str, str], str]:
    lines = (catdir / vm_file(cloud)).read_text().splitlines()[1:]
    return {(r.split(",")[0], r.split(",")[1]): r.split(",")[4] for r in lines}


# --- AWS ------------------------------------------------------------------------------------

def _aws_dir(tmp_path: Path, doc: dict[str, Any] | None = None) -> Path:
    d = tmp_path / "offers"
    d.mkdir(exist_ok=True)
    text = json.dumps(doc) if doc else (DATA / "aws_us-east-1.json").read_text()
    (d / "us-east-1.json").write_text(text)
    return d


def test_aws_parse_skips_windows_dedicated_reserved_and_sql() -> None:
    doc = json.loads((DATA / "aws_us-east-1.json").read_text())
    rows = aws.parse_offer(doc, "us-east-1", {"m5.large", "t3.medium"})
    got = {(r.instance_type, r.price_usd_per_hour, r.vcpus, r.memory_gib) for r in rows}
    assert got == {("m5.large", 0.096, 2, 8.0), ("t3.medium", 0.0416, 2, 4.0)}
    assert {r.source_date for r in rows} == {"2026-11-01"}
    assert all(r.spot_price_usd_per_hour is None for r in rows)  # bulk files have no spot


def test_aws_refresh_writes_the_same_prices_as_the_catalogue(tmp_path: Path,
                                                             catdir: Path) -> None:
    before = _prices(catdir, "aws")
    code = aws.main(["--regions", "us-east-1", "--types", "m5.large,t3.medium,c5.large",
                     "--catalog-dir", str(catdir), "--offers-dir", str(_aws_dir(tmp_path))])
    assert code == 0
    after = _prices(catdir, "aws")
    assert set(after) == set(before)  # other rows kept
    for t in ("m5.large", "t3.medium", "c5.large"):
        assert float(after[("us-east-1", t)]) == float(before[("us-east-1", t)])
    assert len(load_catalog(catdir).vms_of("aws")) == 520


def test_aws_missing_type_refuses_and_leaves_the_file(tmp_path: Path, catdir: Path) -> None:
    original = (catdir / vm_file("aws")).read_bytes()
    code = aws.main(["--regions", "us-east-1", "--types", "m5.large,r5.large",
                     "--catalog-dir", str(catdir), "--offers-dir", str(_aws_dir(tmp_path))])
    assert code == RefreshError.exit_code
    assert (catdir / vm_file("aws")).read_bytes() == original
    assert not list(catdir.glob(".*.tmp"))  # no temporary file left behind


def test_aws_missing_region_file_refuses(tmp_path: Path, catdir: Path,
                                         capsys: pytest.CaptureFixture[str]) -> None:
    original = (catdir / vm_file("aws")).read_bytes()
    code = aws.main(["--regions", "us-east-1,eu-west-1", "--types", "m5.large",
                     "--catalog-dir", str(catdir), "--offers-dir", str(_aws_dir(tmp_path))])
    assert code == RefreshError.exit_code
    assert "eu-west-1" in capsys.readouterr().err
    assert (catdir / vm_file("aws")).read_bytes() == original


def test_aws_invalid_price_is_refused_by_validation(tmp_path: Path, catdir: Path) -> None:
    doc = json.loads((DATA / "aws_us-east-1.json").read_text())
    for term in doc["terms"]["OnDemand"]["2XFZQ8ZQ8PFMXWZP"].values():
        for dim in term["priceDimensions"].values():
            dim["pricePerUnit"]["USD"] = "-0.096"
    original = (catdir / vm_file("aws")).read_bytes()
    code = aws.main(["--regions", "us-east-1", "--types", "m5.large", "--catalog-dir",
                     str(catdir), "--offers-dir", str(_aws_dir(tmp_path, doc))])
    assert code == RefreshError.exit_code
    assert (catdir / vm_file("aws")).read_bytes() == original


def test_aws_rejects_a_document_that_is_not_an_offer_file() -> None:
    with pytest.raises(RefreshError, match="not an AmazonEC2 offer file"):
        aws.parse_offer({"offerCode": "AmazonS3"}, "us-east-1", {"m5.large"})


# --- Azure ----------------------------------------------------------------------------------

def _azure_dir(tmp_path: Path, pages: int = 2) -> Path:
    d = tmp_path / "pages"
    d.mkdir(exist_ok=True)
    for i in range(1, pages + 1):
        shutil.copy(DATA / f"azure_koreacentral-{i}.json", d / f"koreacentral-{i}.json")
    return d


def test_azure_parse_linux_spot_and_latest_meter() -> None:
    items = [it for i in (1, 2) for it in
             json.loads((DATA / f"azure_koreacentral-{i}.json").read_text())["Items"]]
    shapes = {"Standard_D2s_v5": Shape(2, 8.0), "Standard_B2s": Shape(2, 4.0)}
    rows = {r.instance_type: r for r in azure.parse_items(
        items, "koreacentral", {"Standard_D2s_v5", "Standard_B2s"}, shapes)}
    assert rows["Standard_D2s_v5"].price_usd_per_hour == 0.118   # not Windows, not Low Priority
    assert rows["Standard_D2s_v5"].spot_price_usd_per_hour == 0.0236
    assert rows["Standard_B2s"].price_usd_per_hour == 0.052      # the newer meter (page 2)
    assert rows["Standard_B2s"].spot_price_usd_per_hour is None


def test_azure_refresh_follows_pages(tmp_path: Path, catdir: Path) -> None:
    before = _prices(catdir, "azure")
    code = azure.main(["--regions", "koreacentral", "--types",
                       "Standard_D2s_v5,Standard_D4s_v5,Standard_B2s", "--catalog-dir",
                       str(catdir), "--pages-dir", str(_azure_dir(tmp_path))])
    assert code == 0
    after = _prices(catdir, "azure")
    for t in ("Standard_D2s_v5", "Standard_D4s_v5", "Standard_B2s"):
        assert float(after[("koreacentral", t)]) == float(before[("koreacentral", t)])
    load_catalog(catdir)


def test_azure_page_cut_short_refuses(tmp_path: Path, catdir: Path) -> None:
    # page 2 is missing: B2s is absent and page 1's NextPageLink leads nowhere
    original = (catdir / vm_file("azure")).read_bytes()
    code = azure.main(["--regions", "koreacentral", "--types", "Standard_D2s_v5,Standard_B2s",
                       "--catalog-dir", str(catdir), "--pages-dir",
                       str(_azure_dir(tmp_path, pages=1))])
    assert code == RefreshError.exit_code
    assert (catdir / vm_file("azure")).read_bytes() == original


def test_azure_api_failure_mid_way_refuses(catdir: Path) -> None:
    first = json.loads((DATA / "azure_koreacentral-1.json").read_text())

    def get(url: str) -> dict[str, Any]:
        if "$skip" in url:
            raise RefreshError("azure: page 2 failed (HTTP 503); not written.")
        return dict(first)

    original = (catdir / vm_file("azure")).read_bytes()
    assert azure.main(["--regions", "koreacentral", "--types", "Standard_D2s_v5",
                       "--catalog-dir", str(catdir)], get=get) == RefreshError.exit_code
    assert (catdir / vm_file("azure")).read_bytes() == original


# --- GCP ------------------------------------------------------------------------------------

def test_gcp_price_is_cores_plus_ram() -> None:
    skus = json.loads((DATA / "gcp_skus.json").read_text())["skus"]
    shapes = {"e2-standard-2": Shape(2, 8.0), "n2-standard-2": Shape(2, 8.0)}
    rows = {(r.region, r.instance_type): r for r in gcp.parse_skus(
        skus, {"us-central1", "asia-northeast3"}, {"e2-standard-2", "n2-standard-2"}, shapes)}
    e2 = rows[("us-central1", "e2-standard-2")]
    assert e2.price_usd_per_hour == pytest.approx(2 * 0.02181159 + 8 * 0.00292336, abs=1e-6)
    assert e2.spot_price_usd_per_hour == pytest.approx(2 * 0.008724 + 8 * 0.001169, abs=1e-6)
    assert rows[("asia-northeast3", "e2-standard-2")].price_usd_per_hour == pytest.approx(
        0.085966, abs=1e-6)  # the custom-machine SKU in Seoul was skipped
    assert ("asia-northeast3", "n2-standard-2") not in rows   # N2 not in the sample there


def test_gcp_refresh_matches_catalogue(catdir: Path) -> None:
    before = _prices(catdir, "gcp")
    code = gcp.main(["--regions", "us-central1,asia-northeast3", "--types",
                     "e2-standard-2,e2-standard-4", "--catalog-dir", str(catdir),
                     "--skus-file", str(DATA / "gcp_skus.json")])
    assert code == 0
    after = _prices(catdir, "gcp")
    for key in [(r, t) for r in ("us-central1", "asia-northeast3")
                for t in ("e2-standard-2", "e2-standard-4")]:
        assert float(after[key]) == pytest.approx(float(before[key]), abs=1e-5)


def test_gcp_missing_series_refuses(catdir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    original = (catdir / vm_file("gcp")).read_bytes()
    code = gcp.main(["--regions", "asia-northeast3", "--types", "e2-standard-2,n2-standard-2",
                     "--catalog-dir", str(catdir), "--skus-file", str(DATA / "gcp_skus.json")])
    assert code == RefreshError.exit_code
    assert "n2-standard-2 in asia-northeast3" in capsys.readouterr().err
    assert (catdir / vm_file("gcp")).read_bytes() == original


def test_gcp_without_api_key_says_how(catdir: Path, monkeypatch: pytest.MonkeyPatch,
                                      capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.delenv("GCP_API_KEY", raising=False)
    assert gcp.main(["--catalog-dir", str(catdir)]) == RefreshError.exit_code
    assert "export GCP_API_KEY" in capsys.readouterr().err
