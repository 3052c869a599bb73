"""Helpers for the optimizer tests: a small valid stack config built in memory."""

from __future__ import annotations

import copy
from typing import Any

from fedcloud.core.config import RawConfig, from_mapping
from fedcloud.core.stack import parse
from fedcloud.federation import plan_request
from optimizer import PlanRequest

BASE: dict[str, Any] = {
    "participants": [
        {"name": "us", "location": {"region": "aws:us-east-1"}},
        {"name": "kr", "location": {"region": "azure:koreacentral"}},
        {"name": "it", "location": {"lat": 45.46, "lon": 9.19}},
    ],
    "limits": {"maxCost": 85000, "maxLatencyMs": 250},
    "currency": {"code": "KRW", "perUsd": 1417},
    "weights": [[9, 1], [5, 5], [1, 9]],
    "costModel": {"rounds": 50, "roundTrainS": 120},
    "baseline": {"cloud": "aws", "region": "ap-northeast-2", "instanceType": "m5.large"},
}


def raw(**overrides: Any) -> RawConfig:
    """Return a RawConfig of BASE with top-level keys replaced (None removes a key)."""
    values = copy.deepcopy(BASE)
    for k, v in overrides.items():
        if v is None:
            values.pop(k, None)
        else:
            values[k] = v
    return from_mapping("test", "test-stack", values)


def request_of(config: RawConfig) -> PlanRequest:
    """The optimizer's request for a stack, built the way both compositions build it."""
    return plan_request(parse(config))
