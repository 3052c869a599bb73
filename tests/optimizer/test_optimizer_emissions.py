"""Emissions as the third objective, the VM size that follows the job, both cost bases.

Also the carbon catalogue's contract: bad input is one error naming the file and the row.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
from optimizer_fixtures import raw, request_of

from fedcloud.core.errors import CatalogError, PlanError
from optimizer import plan
from optimizer.catalog import CATALOG_DIR, load_catalog
from optimizer.catalog.derive_carbon import published_factors
from optimizer.cost import HOURS_PER_MONTH
from optimizer.front import hypervolume, pareto_front, pick
from optimizer.space import build_space

F3 = np.array([[1.0, 100.0, 5.0], [2.0, 20.0, 9.0], [10.0, 10.0, 8.0], [3.0, 90.0, 1.0],
               [4.0, 95.0, 2.0]])


def test_pareto_front_in_three_objectives() -> None:
    # point 4 is dominated by 3 in all three; 5 duplicates 0; the rest trade off
    f = np.vstack([F3, F3[:1]])
    assert pareto_front(f, np.arange(6)).tolist() == [0, 1, 3, 2]


@pytest.mark.parametrize(("weights", "expected"), [
    ((0, 0, 1), 3),      # emissions only: the lowest-emission point
    ((1, 0, 0), 0),      # cost only
    ((0, 1, 0), 2),      # latency only
    ((1, 0), 0),         # a pair picks on the cost-latency trade-off only ...
    ((0, 1), 2),
])
def test_weighted_pick_three_objectives(weights: tuple[float, ...], expected: int) -> None:
    front = F3[[0, 1, 2, 3]]
    assert pick(front, weights) == [0, 1, 2, 3].index(expected)


def test_pair_weights_ignore_emissions_but_break_ties_by_them() -> None:
    # two points with the same cost and latency: the pair picks the cleaner one
    front = np.array([[1.0, 50.0, 9.0], [1.0, 50.0, 2.0], [5.0, 10.0, 1.0]])
    assert pick(front, (1, 0)) == 1


def test_hypervolume_3d_matches_pymoo() -> None:
    from pymoo.indicators.hv import HV

    ref = np.array([12.0, 120.0, 10.0])
    front = F3[[0, 1, 2, 3]]
    assert hypervolume(front, ref) == pytest.approx(float(HV(ref_point=ref)(front)))


def test_case_study_has_emissions_and_both_cost_bases() -> None:
    res = plan(request_of(raw()), "exhaustive")
    assert len(res.front) >= 5 and all(p.objectives.co2e_kg for p in res.front)
    assert res.baseline is not None
    for c in res.choices:
        assert c.vs_baseline is not None
        monthly = 100 * (1 - c.point.choice.price_usd_per_hour
                         / res.baseline.choice.price_usd_per_hour)
        assert c.vs_baseline.monthly_cost_cut_pct == pytest.approx(monthly)
        assert c.point.objectives.monthly_cost_usd == pytest.approx(
            c.point.choice.price_usd_per_hour * HOURS_PER_MONTH)
    # emissions only: the front's cleanest point
    clean = plan(request_of(raw(weights=[[0, 0, 1]])), "exhaustive")
    assert clean.choice == min(res.front, key=lambda p: p.objectives.co2e_kg or 0).choice


def test_emissions_are_energy_times_pue_times_grid_factor() -> None:
    req = request_of(raw())
    space, cat = build_space(req), load_catalog()
    i = 0
    grid = cat.grid[(space.rows[i].cloud, space.rows[i].region)]
    assert grid.kg_per_kwh is not None
    assert space.co2e_kg[i] == pytest.approx(space.energy_kwh[i] * grid.pue * grid.kg_per_kwh)


def test_regions_without_a_factor_are_left_out_and_named() -> None:
    res = plan(request_of(raw()), "exhaustive")
    assert "azure:norwayeast" in res.no_grid_factor
    space = build_space(request_of(raw()))
    assert ("azure", "norwayeast") not in space.region_keys
    assert not np.isnan(space.co2e_kg).any()


def test_emissions_limit_binds() -> None:
    free = plan(request_of(raw()), "exhaustive")
    limit = float(np.median([p.objectives.co2e_kg for p in free.front]))
    res = plan(request_of(raw(limits={"maxCost": 85000, "maxLatencyMs": 250,
                                      "maxCo2eKg": limit})), "exhaustive")
    assert res.front and all((p.objectives.co2e_kg or 0) <= limit for p in res.front)
    assert len(res.front) < len(free.front)
    with pytest.raises(PlanError, match=r"no option meets maxCo2eKg 1e-07.*To fix: raise "
                       r"fedcloud:limits.maxCo2eKg"):
        plan(request_of(raw(limits={"maxCost": 85000, "maxLatencyMs": 250,
                                    "maxCo2eKg": 1e-7})), "exhaustive")


def test_vm_size_follows_the_job() -> None:
    cat = load_catalog()
    regions = sorted(cat.regions)[::2][:50]
    people = [{"name": f"p{i}", "location": {"region": f"{c}:{r}"}}
              for i, (c, r) in enumerate(regions)]
    limits = {"maxCost": 10_000_000, "maxLatencyMs": 500}
    small = plan(request_of(raw(participants=people, limits=limits, baseline=None,
                                costModel={"rounds": 20, "modelMb": 26})), "exhaustive")
    big = plan(request_of(raw(participants=people, limits=limits, baseline=None,
                              costModel={"rounds": 20, "modelMb": 1000})), "exhaustive")
    assert big.memory_need_gib > 64 > small.memory_need_gib  # beyond every 64 GiB size
    assert all(p.choice.memory_gib >= big.memory_need_gib for p in big.front)
    assert {c.point.choice.instance_type for c in big.choices}.isdisjoint(
        {c.point.choice.instance_type for c in small.choices})


@pytest.fixture
def catdir(tmp_path: Path) -> Path:
    for f in CATALOG_DIR.glob("*.csv"):
        shutil.copy(f, tmp_path / f.name)
    return tmp_path


def _replace_line(path: Path, prefix: str, new: str) -> int:
    lines = path.read_text().splitlines(keepends=True)
    k = next(i for i, line in enumerate(lines) if line.startswith(prefix))
    lines[k] = new
    path.write_text("".join(lines))
    return k + 1


@pytest.mark.parametrize(("value", "match"), [
    ("lots", r"column 'grid_kgco2e_per_kwh' is 'lots', not a number"),
    ("-0.3", r"column 'grid_kgco2e_per_kwh' is -0.3; it must be >= 0"),
    ("415.7", r"column .grid_kgco2e_per_kwh. is 415.7; it must be <= 1.5 \(wrong unit\?\)"),
])
def test_bad_grid_factor_names_file_and_row(catdir: Path, value: str, match: str) -> None:
    row = _replace_line(catdir / "carbon_grid.csv", "aws,us-east-1,",
                        f"aws,us-east-1,{value},published,x,1.135,y\n")
    with pytest.raises(CatalogError, match=rf"carbon_grid.csv row {row}: {match}") as err:
        load_catalog(catdir)
    assert "\n" not in str(err.value)


def test_bad_power_row_and_missing_coverage(catdir: Path) -> None:
    row = _replace_line(catdir / "vm_power.csv", "aws,m5.large,",
                        "aws,m5.large,x,3.0,1.0,src,0.75,src\n")
    with pytest.raises(CatalogError, match=rf"vm_power.csv row {row}: max_watts_per_vcpu 1 is "
                       "below min_watts_per_vcpu 3"):
        load_catalog(catdir)
    path = catdir / "vm_power.csv"
    path.write_text("".join(line for line in path.read_text().splitlines(keepends=True)
                            if not line.startswith("aws,m5.large,")))
    with pytest.raises(CatalogError, match=r"instance type aws:m5.large has no row"):
        load_catalog(catdir)


@pytest.mark.parametrize(("value", "match"), [
    ("n/a", r"CO2e \(metric ton/kWh\) is 'n/a', not a number"),
    ("-1", r"CO2e \(metric ton/kWh\) is -1; it must be a finite number >= 0"),
])
def test_bad_carbon_facts_name_file_and_row(tmp_path: Path, value: str, match: str) -> None:
    (tmp_path / "grid_aws.csv").write_text(
        "Region,Country,NERC Region,CO2e (metric ton/kWh),Source\n"
        "us-east-1,United States,SERC,0.000415755,EPA\n"
        f"us-east-2,United States,RFC,{value},EPA\n")
    with pytest.raises(CatalogError, match=rf"grid_aws.csv row 3: {match}") as err:
        published_factors(tmp_path)
    assert "\n" not in str(err.value)


def test_derived_units_and_the_country_rule() -> None:
    cat = load_catalog()
    # t/kWh in the facts -> kg/kWh here (aws us-east-1: 0.000415755 t/kWh)
    assert cat.grid[("aws", "us-east-1")].kg_per_kwh == pytest.approx(0.415755)
    # no published factor for Azure Seoul: the highest published in South Korea (GCP Seoul)
    kr = cat.grid[("azure", "koreacentral")]
    assert kr.kg_per_kwh == pytest.approx(0.54) and "gcp:asia-northeast3" in kr.basis
    # no factor anywhere for Norway: unknown, never made up
    assert cat.grid[("azure", "norwayeast")].kg_per_kwh is None
