"""Cost, time, memory and emissions models on small hand-checked tables."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from fl.app.protocol import traffic
from optimizer import cost
from optimizer.request import CostModel

MEASURED = {"serverapp_baseline_mb": 200.0, "copies_per_participant": 2.0,
            "strategy_copies": 1.5, "aggregate_s_per_mb": 0.004}


def _cm(wire: str = "float32", **kw: float) -> CostModel:
    base = {"rounds": 10, "model_mb": 25.0, "bandwidth_mbps": 100.0, "round_train_s": 60.0,
            "rtts_per_round": 30.0, "setup_hours": 1.0}
    base.update(kw)
    return CostModel(egress_usd_per_gb={"aws": 0.09, "gcp": 0.12, "azure": 0.087},
                     traffic=traffic(wire), **base)  # type: ignore[arg-type]


def _round(rtt: list[list[float]], nic_gbps: float, cm: CostModel) -> float:
    return float(cost.round_seconds(np.array(rtt), np.array([0]), np.array([nic_gbps]), cm,
                                    MEASURED["aggregate_s_per_mb"])[0])


@pytest.mark.parametrize(("rtt", "nic", "kw", "round_s"), [
    # 60 s training + 2 copies (declared) x 25 MB x 8 / 100 Mbps = 4 s + 30 x 0.1 s
    # + aggregation 1 x 25 MB x 0.004 s/MB = 0.1 s
    ([[100.0]], 10.0, {}, 67.1),
    # the slowest participant's RTT sets the pace; 2 participants aggregate 50 MB
    ([[100.0], [200.0]], 10.0, {}, 60 + 4 + 6 + 0.2),
    # a 10 Mbit/s NIC: the fan-out (1 x 2 x 25 MB x 8 / 10 Mbps = 40 s) beats the link
    ([[100.0]], 0.01, {}, 60 + 40 + 3 + 0.1),
    ([[100.0]], 10.0, {"rtts_per_round": 0.0}, 64.1),
])
def test_round_seconds(rtt: list[list[float]], nic: float, kw: dict[str, float],
                       round_s: float) -> None:
    assert _round(rtt, nic, _cm(**kw)) == pytest.approx(round_s)


def test_job_hours_include_the_final_evaluation() -> None:
    cm = _cm()
    hours = cost.job_hours(np.array([[100.0]]), np.array([0]), np.array([10.0]), cm,
                           MEASURED["aggregate_s_per_mb"])[0]
    # final evaluation: 1 copy down (2 s) + 30 x 1/2 round trips x 0.1 s
    assert hours == pytest.approx(1.0 + (10 * 67.1 + 2.0 + 1.5) / 3600)


def test_egress_follows_the_declared_traffic() -> None:
    cm = _cm()
    t = cm.traffic
    # 25 MB x 3 participants x (1 download x 10 rounds + 1 final evaluation) = 0.825 GB
    down = 25e6 * 3 * (t.downloads_per_round * 10 + t.downloads_per_run)
    assert cost.egress_gb(3, cm) == pytest.approx(down / 1e9) == pytest.approx(0.825)
    assert cost.egress_usd("aws", 3, cm) == pytest.approx(0.825 * 0.09)
    total = cost.job_cost_usd(np.array([0.1]), np.array([2.0]), np.array([0.07425]))[0]
    assert total == pytest.approx(0.2 + 0.07425)


def test_float16_halves_the_egress_by_the_declared_ratio() -> None:
    f32, f16 = _cm("float32"), _cm("float16")
    ratio = f16.traffic.wire_ratio / f32.traffic.wire_ratio
    assert ratio == 0.5
    assert cost.egress_usd("gcp", 4, f16) == pytest.approx(ratio * cost.egress_usd("gcp", 4, f32))
    assert cost.egress_usd("gcp", 4, f16) < cost.egress_usd("gcp", 4, f32)
    # and the link time of a round (2 copies x 12.5 MB x 8 / 100 Mbps = 2 s)
    assert _round([[0.0]], 10.0, f16) == pytest.approx(60 + 2 + 0.1)


def test_memory_need_grows_with_participants_and_model() -> None:
    need = cost.memory_need_gib(4, _cm(), MEASURED)
    assert need == pytest.approx((200e6 + 25e6 * (2 * 4 + 1.5)) / 2 ** 30)
    assert cost.memory_need_gib(50, _cm(model_mb=1000.0), MEASURED) > 90


def test_energy_and_emissions_follow_ccf() -> None:
    cm = dataclasses.replace(_cm(), cpu_utilization=0.5)
    energy = cost.energy_kwh(np.array([2.0]), np.array([4.0]), np.array([2.0]), np.array([1.0]),
                             np.array([3.0]), 3, cm)[0]
    compute = 2 * 2 * (1 + 0.5 * (3 - 1)) / 1000            # vCPU-hours x W
    memory = 4 * 2 ** 30 / 1e9 * 2 * 0.000392                 # GB-hours x kWh/GB-h
    network = (0.825 + 25e6 * 3 * 10 / 1e9) * 0.001          # down + up GB x kWh/GB
    assert energy == pytest.approx(compute + memory + network)
    assert cost.co2e_kg(np.array([energy]), np.array([1.1]), np.array([0.5]))[0] == \
        pytest.approx(energy * 1.1 * 0.5)
