"""Planning: NSGA-II matches the exhaustive ground truth, deterministically.

Also: pins, targets and limits are honoured; infeasible requests are explained.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from optimizer_fixtures import raw, request_of

from fedcloud.cli.main import main
from fedcloud.core.config import load_stack
from fedcloud.core.errors import PlanError
from optimizer import PlanRequest, plan
from optimizer.front import hypervolume, pareto_front, pick

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def case() -> PlanRequest:
    return request_of(load_stack("covid19"))


def test_case_study_nsga2_equals_exhaustive(case: PlanRequest) -> None:
    ex, ns = plan(case, "exhaustive"), plan(case, "nsga2")
    assert [p.flat() for p in ns.front] == [p.flat() for p in ex.front]
    assert [c.to_dict() for c in ns.choices] == [c.to_dict() for c in ex.choices]
    assert ns.choice == ex.choice == ex.choices[0].point.choice
    # the case study's limits hold for every pick
    for c in ex.choices:
        assert c.point.objectives.cost_local <= 85000
        assert c.point.objectives.latency_ms <= 250
    # three objectives: the front is sorted by cost and no point dominates another
    f = np.array([[p.objectives.cost_usd, p.objectives.latency_ms, p.objectives.co2e_kg]
                  for p in ex.front])
    assert list(f[:, 0]) == sorted(f[:, 0]) and len(f) >= 5
    for a in f:
        assert not any(np.all(b <= a) and np.any(b < a) for b in f)
    # baseline comparison is reported per weight
    assert ex.baseline is not None and all(c.vs_baseline is not None for c in ex.choices)
    assert ex.cost_cut_pct[0] == pytest.approx(
        100 * (1 - ex.choices[0].point.objectives.cost_usd / ex.baseline.objectives.cost_usd))


def test_nsga2_is_deterministic_for_a_seed() -> None:
    req = request_of(raw(clouds=["aws", "azure"], optimizer={"seed": 3}))
    a, b = plan(req, "nsga2"), plan(req, "nsga2")
    assert a.to_dict()["front"] == b.to_dict()["front"]
    assert a.evaluated == b.evaluated


def test_json_shape(case: PlanRequest) -> None:
    d = plan(case, "exhaustive").to_dict()
    option = {"cloud", "region", "instance_type", "vcpus", "memory_gib", "price_usd_per_hour"}
    assert set(d["choice"]) == option
    assert {"cost_usd", "cost_local", "latency_ms", "mean_latency_ms"} <= set(d["objectives"])
    assert all(option | {"cost_usd", "cost_local", "latency_ms"} <= set(p) for p in d["front"])
    assert option | {"objectives"} <= set(d["baseline"])
    assert (d["method"], d["seed"]) == ("exhaustive", 1) and d["elapsed_s"] >= 0
    assert [c["weights"] for c in d["choices"]] == [[9, 1], [5, 5], [1, 9]]
    assert {"cost_cut_pct", "monthly_cost_cut_pct", "latency_change_pct",
            "co2e_change_pct"} <= set(d["choices"][0]["vs_baseline"])
    assert d["objectives"]["co2e_kg"] > 0 and all(p["co2e_kg"] > 0 for p in d["front"])
    assert d["search"]["objectives"] == ["cost_usd", "latency_ms", "co2e_kg"]
    json.dumps(d)  # plain Python values only


def test_pin_is_deployed_and_target_restricts_the_cloud() -> None:
    pin = {"cloud": "gcp", "region": "europe-west1", "instanceType": "n2-standard-4"}
    res = plan(request_of(raw(aggregator={"pin": pin})), "exhaustive")
    assert res.pinned and res.choice.label == "gcp:europe-west1/n2-standard-4"
    assert res.choices  # the front is still reported
    res = plan(request_of(raw(aggregator={"target": "aws"})), "exhaustive")
    assert {p.choice.cloud for p in res.front} == {"aws"}
    res = plan(request_of(raw(aggregator={"target": "local"})), "exhaustive")
    assert res.target == "local" and res.front


def test_min_spec_and_region_allow_list_filter() -> None:
    req = request_of(raw(aggregator={"minVcpus": 8, "minMemoryGib": 32},
                                   regions=["aws:eu-west-1", "gcp:europe-west1"]))
    res = plan(req, "exhaustive")
    assert all(p.choice.vcpus >= 8 and p.choice.memory_gib >= 32 for p in res.front)
    assert {(p.choice.cloud, p.choice.region) for p in res.front} <= {
        ("aws", "eu-west-1"), ("gcp", "europe-west1")}


@pytest.mark.parametrize(("limits", "match"), [
    # latency alone binds: no region is within 50 ms of US, Korea and Italy
    ({"maxCost": 85000, "maxLatencyMs": 50},
     r"the latency limit binds.*Closest: .*To fix: raise fedcloud:limits.maxLatencyMs to at "
     r"least \d+"),
    # cost alone binds
    ({"maxCost": 10, "maxLatencyMs": 250},
     r"the cost limit binds: the cheapest option costs [\d,]+ KRW.*To fix: raise "
     r"fedcloud:limits.maxCost to at least"),
    # both bind
    ({"maxCost": 10, "maxLatencyMs": 50}, r"both limits bind"),
])
def test_infeasible_limits_say_which_binds(limits: dict[str, float], match: str) -> None:
    with pytest.raises(PlanError, match=match):
        plan(request_of(raw(limits=limits)), "exhaustive")


def test_no_vm_meets_the_minimum() -> None:
    req = request_of(raw(aggregator={"minVcpus": 64}))
    with pytest.raises(PlanError, match=r"no VM .* has at least 64 vCPU.*largest: .*To fix: "
                       r"lower fedcloud:aggregator.minVcpus"):
        plan(req, "exhaustive")


@pytest.mark.parametrize(("f", "cand", "front"), [
    # dominated (2) and duplicate (3 equals 0) points drop; sorted by cost
    ([[1, 9], [2, 5], [3, 6], [1, 9], [5, 1]], [0, 1, 2, 3, 4], [0, 1, 4]),
    # same cost, higher latency is dominated
    ([[1, 9], [1, 8]], [0, 1], [1]),
    # only candidates count
    ([[1, 9], [2, 5], [5, 1]], [2], [2]),
])
def test_pareto_front(f: list[list[float]], cand: list[int], front: list[int]) -> None:
    assert pareto_front(np.array(f, dtype=float), np.array(cand)).tolist() == front


@pytest.mark.parametrize(("weights", "expected"), [
    ((1, 0), 0),   # cost only: the cheapest
    ((0, 1), 2),   # latency only: the fastest
    ((9, 1), 0),
    ((1, 9), 2),
    ((5, 5), 1),   # the knee
])
def test_weighted_pick(weights: tuple[float, float], expected: int) -> None:
    front = np.array([[1.0, 100.0], [2.0, 20.0], [10.0, 10.0]])
    assert pick(front, weights) == expected


def test_hypervolume_matches_pymoo() -> None:
    from pymoo.indicators.hv import HV

    front = np.array([[1.0, 9.0], [2.0, 5.0], [5.0, 1.0]])
    ref = np.array([6.0, 10.0])
    assert hypervolume(front, ref) == pytest.approx(float(HV(ref_point=ref)(front)))


def test_import_stays_light() -> None:
    code = ("import sys, optimizer, optimizer.latency; "
            "print(sorted(m for m in ('pulumi', 'torch', 'flwr', 'pymoo', 'matplotlib') "
            "if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True, cwd=ROOT)
    assert out.stdout.strip() == "[]"


def test_cli_json_and_plot(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    png = tmp_path / "front.png"
    assert main(["plan", "--stack", "covid19", "--method", "exhaustive", "--json",
                 "--plot", str(png)]) == 0
    d = json.loads(capsys.readouterr().out)
    assert d["method"] == "exhaustive" and len(d["choices"]) == 3
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_cli_table(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["plan", "--stack", "covid19", "--method", "exhaustive"]) == 0
    out = capsys.readouterr().out
    assert "baseline" in out and "9:1" in out and "1:9" in out and "deployed:" in out
    assert "g CO2e" in out and "month" in out and "memory need 0.43 GiB" in out
    assert "left out (no grid emissions factor): aws:me-central-1" in out


def test_cli_infeasible_is_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    text = (ROOT / "stacks" / "Pulumi.covid19.yaml").read_text().replace(
        "maxLatencyMs: 250", "maxLatencyMs: 20")
    path = tmp_path / "Pulumi.tight.yaml"
    path.write_text(text)
    assert main(["plan", "--config", str(path), "--method", "exhaustive"]) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "latency limit binds" in err
