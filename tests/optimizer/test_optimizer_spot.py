"""The spot market: ``aggregator.market``, the interruption model and the on-demand comparison."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
from optimizer_fixtures import raw, request_of

from fedcloud.core.errors import ConfigError, PlanError
from fedcloud.core.plan import RESUME_OVERHEAD_S, SPOT_INTERRUPTIONS_PER_HOUR
from fedcloud.core.stack import parse
from optimizer import PlanRequest, PlanResult, plan, spot_cost_cut
from optimizer import cost as cost_model
from optimizer.catalog import load_catalog
from optimizer.front import hypervolume
from optimizer.space import build_space


def spot_request(market: str = "spot", **cost: float) -> PlanRequest:
    cm = {"rounds": 50, "roundTrainS": 120, **cost}
    return request_of(raw(aggregator={"market": market}, costModel=cm))


def test_market_defaults_to_on_demand_and_the_assumptions_to_the_stated_figures() -> None:
    settings = parse(raw()).plan
    assert settings.market == "onDemand"
    # Pulumi.yaml's defaults and the code's (CostModel built directly) state the same figures.
    assert settings.cost_model.spot_interruptions_per_hour == pytest.approx(
        SPOT_INTERRUPTIONS_PER_HOUR, rel=1e-3)
    assert pytest.approx(0.05 / 730) == SPOT_INTERRUPTIONS_PER_HOUR
    assert settings.cost_model.resume_overhead_s == RESUME_OVERHEAD_S


def test_a_bad_market_names_the_key_and_the_fix() -> None:
    with pytest.raises(ConfigError) as err:
        parse(raw(aggregator={"market": "spto"}))
    text = str(err.value)
    assert "fedcloud:aggregator.market" in text and "did you mean 'spot'" in text
    assert "\n" not in text


def test_spot_needs_aws_or_gcp() -> None:
    with pytest.raises(ConfigError, match=r"fedcloud:aggregator\.market.*onDemand or auto"):
        request_of(raw(aggregator={"market": "spot", "target": "azure"}))


def test_on_demand_plans_keep_their_shape() -> None:
    explicit = plan(request_of(raw(aggregator={"market": "onDemand"})), method="exhaustive")
    default = plan(request_of(raw()), method="exhaustive")
    a, b = explicit.to_dict(), default.to_dict()
    a.pop("elapsed_s"), b.pop("elapsed_s")
    assert a == b
    assert "market" not in a and "market" not in a["choice"] and "market" not in a["front"][0]
    assert "vs_on_demand" not in a["choices"][0]


def test_spot_options_are_aws_and_gcp_rows_with_a_spot_price() -> None:
    space = build_space(spot_request())
    assert set(space.markets) == {"spot"}
    assert {v.cloud for v in space.rows} <= {"aws", "gcp"}
    assert all(v.spot_price_usd_per_hour == p for v, p in zip(
        space.rows, space.price_usd_per_hour, strict=True))


def test_spot_cost_adds_the_expected_interruptions() -> None:
    rate, overhead = 0.2, 300.0
    req = spot_request("auto", spotInterruptionsPerHour=rate, resumeOverheadS=overhead)
    space, cat = build_space(req), load_catalog()
    i = next(k for k, m in enumerate(space.markets) if m == "spot")
    j = i - 1  # the same row on demand comes first
    assert space.rows[j] == space.rows[i] and space.markets[j] == "onDemand"
    row, cm, n = space.rows[i], req.cost_model, len(req.participants)
    nic = np.array([cat.power[(row.cloud, row.instance_type)].network_gbps])
    col = np.array([space.region_of[i]])
    per_mb = cat.aggregator["aggregate_s_per_mb"]
    hours = float(cost_model.job_hours(space.rtt_ms, col, nic, cm, per_mb)[0])
    round_s = float(cost_model.round_seconds(space.rtt_ms, col, nic, cm, per_mb)[0])
    lost = rate * hours
    assert space.interruptions[i] == pytest.approx(lost) and space.interruptions[j] == 0
    assert space.job_hours[j] == pytest.approx(hours)
    assert space.job_hours[i] == pytest.approx(hours + lost * (overhead + round_s) / 3600)
    round_gb = 26e6 * n / 1e9   # one download per participant per round, float32
    egress = cost_model.egress_usd(row.cloud, n, cm) + lost * round_gb * cm.egress_usd_per_gb[
        row.cloud]
    assert space.egress_usd[i] == pytest.approx(egress)
    assert space.cost_usd[i] == pytest.approx(
        row.spot_price_usd_per_hour * space.job_hours[i] + egress)
    assert space.co2e_kg[i] > space.co2e_kg[j]   # longer on the VM, one more round moved


def test_auto_compares_every_pick_with_the_on_demand_pick_at_the_same_weights() -> None:
    auto = plan(spot_request("auto"), method="exhaustive")
    on_demand = plan(request_of(raw(costModel={"rounds": 50, "roundTrainS": 120})),
                     method="exhaustive")
    d = auto.to_dict()
    assert d["market"] == "auto"
    assert {p["market"] for p in d["front"]} == {"spot", "onDemand"}
    for mine, theirs in zip(auto.choices, on_demand.choices, strict=True):
        vs = mine.vs_on_demand
        assert vs is not None and vs.on_demand == theirs.point
        base = theirs.point.objectives.cost_usd
        assert vs.cost_cut_pct == pytest.approx(
            100 * (base - mine.point.objectives.cost_usd) / base)
    assert d["choices"][0]["vs_on_demand"]["on_demand"]["market"] == "onDemand"
    first = auto.choices[0].vs_on_demand
    assert auto.choice.market == "spot" and first is not None and first.cost_cut_pct > 0


def test_a_high_interruption_rate_makes_auto_choose_on_demand() -> None:
    # 20 interruptions an hour, 30 min lost each: spot costs more than it saves.
    auto = plan(spot_request("auto", spotInterruptionsPerHour=20, resumeOverheadS=1800),
                method="exhaustive")
    cost_first = auto.choices[0]
    assert cost_first.point.choice.market == "onDemand"
    assert cost_first.vs_on_demand is not None and cost_first.vs_on_demand.cost_cut_pct == 0


def test_nsga2_finds_the_exhaustive_front_with_both_markets() -> None:
    req = spot_request("auto")
    space = build_space(req)
    ref = (space.max_cost_usd, space.max_latency_ms,
           1.1 * float(space.co2e_kg[space.feasible].max()))

    def hv(r: PlanResult) -> float:
        return hypervolume(np.array([[p.objectives.cost_usd, p.objectives.latency_ms,
                                      p.objectives.co2e_kg] for p in r.front]), ref)

    assert hv(plan(req, method="nsga2")) == pytest.approx(hv(plan(req, method="exhaustive")))


def test_a_pin_runs_on_spot_only_when_the_market_is_spot() -> None:
    pin = {"cloud": "aws", "region": "us-west-2", "instanceType": "t3.medium"}
    spot = plan(request_of(raw(aggregator={"market": "spot", "pin": pin})), method="exhaustive")
    auto = plan(request_of(raw(aggregator={"market": "auto", "pin": pin})), method="exhaustive")
    assert (spot.choice.market, auto.choice.market) == ("spot", "onDemand")
    assert spot.choice.price_usd_per_hour < auto.choice.price_usd_per_hour


def test_spot_with_no_spot_price_left_fails_saying_so() -> None:
    cat = load_catalog()
    stripped = replace(cat, vms=tuple(replace(v, spot_price_usd_per_hour=None) for v in cat.vms))
    with pytest.raises(PlanError, match="spot price") as err:
        plan(spot_request(), method="exhaustive", cat=stripped)
    assert "fedcloud:aggregator.market" in str(err.value)


def test_case_study_spot_cost_cut() -> None:
    out = spot_cost_cut("covid19")
    assert out["pick"]["choice"]["market"] == "spot"
    assert out["on_demand"]["choice"]["market"] == "onDemand"
    base, mine = out["on_demand"]["objectives"]["cost_usd"], out["pick"]["objectives"]["cost_usd"]
    assert out["spot_cost_cut_pct"] == pytest.approx(100 * (base - mine) / base, abs=0.01)
    assert out["spot_cost_cut_pct"] > 0
    slower = spot_cost_cut("covid19", resume_overhead_s=3600, interruptions_per_hour=1.0)
    assert slower["spot_cost_cut_pct"] < out["spot_cost_cut_pct"]
    assert slower["resume_overhead_s"] == 3600


def test_pulumi_yaml_declares_the_market_and_the_spot_assumptions() -> None:
    from fedcloud.core.config import project_declarations

    decls = project_declarations()
    assert decls["aggregator"]["value"]["market"] == "onDemand"
    values = decls["costModel"]["value"]
    assert values["spotInterruptionsPerHour"] == pytest.approx(0.05 / 730, rel=1e-3)
    assert values["resumeOverheadS"] == RESUME_OVERHEAD_S
    cost_text = " ".join(decls["costModel"]["description"].split())
    assert "0.05/730" in cost_text and "benchmarks/resume.py" in cost_text
