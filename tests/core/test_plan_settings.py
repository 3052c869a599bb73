"""The optimizer's stack sections, typed: weight vectors, the emissions limit, the cost model."""

from __future__ import annotations

import copy
from typing import Any

import pytest

from fedcloud.core.config import from_mapping
from fedcloud.core.errors import ConfigError
from fedcloud.core.plan import PlanSettings
from fedcloud.core.stack import parse

MINIMAL: dict[str, Any] = {
    "limits": {"maxCost": 100, "maxLatencyMs": 300},
    "participants": [{"name": "p", "location": {"region": "aws:us-east-1"}}],
}


def settings(**changes: Any) -> PlanSettings:
    values = copy.deepcopy(MINIMAL)
    values.update(changes)
    return parse(from_mapping("t", "test.yaml", values)).plan


def test_pairs_and_triples_of_weights() -> None:
    plan = settings(weights=[[9, 1], [2, 2, 6], [0, 0, 1]])
    assert plan.weights == ((9.0, 1.0), (2.0, 2.0, 6.0), (0.0, 0.0, 1.0))


def test_emissions_limit_is_optional() -> None:
    assert settings().max_co2e_kg is None
    limits = {"maxCost": 100, "maxLatencyMs": 300, "maxCo2eKg": 0.25}
    assert settings(limits=limits).max_co2e_kg == 0.25


def test_cost_model_defaults_and_the_declared_traffic() -> None:
    cm = settings().cost_model
    assert (cm.cpu_utilization, cm.rtts_per_round) == (0.5, 20)   # Pulumi.yaml defaults
    assert cm.traffic.wire_dtype == "float32" and cm.traffic.wire_ratio == 1.0
    f16 = settings(training={"wireDtype": "float16"}).cost_model.traffic
    assert f16.wire_ratio == 0.5 and f16.copy_bytes(26e6) == 13e6


@pytest.mark.parametrize(("changes", "match"), [
    ({"weights": [[1, 2, 3, 4]]}, r"fedcloud:weights\[0\] is \[1, 2, 3, 4\], not a"),
    ({"weights": [[1, -2, 3]]}, r"fedcloud:weights\[0\] is \[1, -2, 3\]; weights cannot be"),
    ({"limits": {"maxCost": 1, "maxLatencyMs": 1, "maxCo2eKg": 0}},
     r"fedcloud:limits.maxCo2eKg must be > 0"),
    ({"limits": {"maxCost": 1, "maxLatencyMs": 1, "maxCo2": 1}},
     r"fedcloud:limits.maxCo2 is not a known key.*did you mean 'maxCo2eKg'"),
    ({"costModel": {"cpuUtilization": -0.1}}, r"fedcloud:costModel.cpuUtilization must be >= 0"),
])
def test_bad_optimizer_settings_name_the_key(changes: dict[str, Any], match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        settings(**changes)
