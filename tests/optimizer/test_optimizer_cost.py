"""Cost model: job hours, egress and cost on small hand-checked tables."""

from __future__ import annotations

import numpy as np
import pytest

from optimizer import cost
from optimizer.request import CostModel


def _cm(**kw: float) -> CostModel:
    base = {"rounds": 10, "model_mb": 25.0, "bandwidth_mbps": 100.0, "round_train_s": 60.0,
            "rtts_per_round": 30.0, "setup_hours": 1.0}
    base.update(kw)
    return CostModel(egress_usd_per_gb={"aws": 0.09, "gcp": 0.12, "azure": 0.087},
                     **base)  # type: ignore[arg-type]


@pytest.mark.parametrize(("rtt", "kw", "round_s"), [
    # 60 s training + 3 transfers x 25 MB x 8 / 100 Mbps = 6 s + 30 x 0.1 s = 69 s
    ([[100.0]], {}, 69.0),
    # the slowest participant sets the pace (synchronous FedAvg)
    ([[100.0], [200.0]], {}, 72.0),
    # no RTT term
    ([[100.0]], {"rtts_per_round": 0.0}, 66.0),
])
def test_round_seconds(rtt: list[list[float]], kw: dict[str, float], round_s: float) -> None:
    assert cost.round_seconds(np.array(rtt), _cm(**kw))[0] == pytest.approx(round_s)


def test_job_hours_and_egress() -> None:
    cm = _cm()
    hours = cost.job_hours(np.array([[100.0]]), cm)[0]
    assert hours == pytest.approx(1.0 + 10 * 69.0 / 3600)
    # 25 MB x 2 downloads x 3 participants x 10 rounds = 1.5 GB at 0.09 USD/GB
    assert cost.egress_gb(3, cm) == pytest.approx(1.5)
    assert cost.egress_usd("aws", 3, cm) == pytest.approx(0.135)
    total = cost.job_cost_usd(np.array([0.1]), np.array([hours]), np.array([0.135]))[0]
    assert total == pytest.approx(0.1 * hours + 0.135)
