"""Bad input: one-line errors that name the key and the fix; the CLI exits non-zero."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from optimizer_fixtures import BASE, raw, request_of

from fedcloud.cli.main import main
from fedcloud.core.errors import ConfigError


def test_valid_request_and_declared_defaults() -> None:
    req = request_of(raw())
    assert req.clouds == ("aws", "gcp", "azure")
    assert (req.min_vcpus, req.min_memory_gib) == (2, 4)        # Pulumi.yaml aggregator value
    assert req.cost_model.rounds == 50                          # stack
    assert req.cost_model.model_mb == 26                        # sub-key default, merged
    assert req.cost_model.egress_usd_per_gb["gcp"] == 0.12
    assert req.max_cost_usd == pytest.approx(85000 / 1417)
    assert req.weights == ((9, 1), (5, 5), (1, 9))


def test_cost_model_rounds_default_to_training_rounds() -> None:
    req = request_of(raw(costModel={"modelMb": 10}, training={"rounds": 7}))
    assert (req.cost_model.rounds, req.cost_model.model_mb) == (7, 10)


def test_target_cloud_restricts_clouds() -> None:
    assert request_of(raw(aggregator={"target": "gcp"})).clouds == ("gcp",)


P0 = BASE["participants"][0]


@pytest.mark.parametrize(("overrides", "match"), [
    # unknown cloud in the allowed list
    ({"clouds": ["aws", "gpc"]}, r"fedcloud:clouds\[1\] is 'gpc', not a known cloud.*"
                                 r"did you mean 'gcp'"),
    # misspelt allow-list region
    ({"regions": ["aws:us-east1"]}, r"fedcloud:regions\[0\] is 'aws:us-east1'.*"
                                     r"did you mean 'aws:us-east-1'"),
    # misspelt participant region
    ({"participants": [{"name": "x", "location": {"region": "azure:koreacentrl"}}]},
     r"participants\[0\].location.region is 'azure:koreacentrl'.*did you mean "
     r"'azure:koreacentral'"),
    # an rttMs override for an unknown region
    ({"participants": [{**P0, "rttMs": {"gcp:europe-west99": 12}}]},
     r"rttMs.gcp:europe-west99 is 'gcp:europe-west99'"),
    # unknown instance type in the baseline
    ({"baseline": {"cloud": "aws", "region": "us-east-1", "instanceType": "m5.larg"}},
     r"fedcloud:baseline.instanceType is 'm5.larg'.*did you mean 'm5.large'"),
    # pin in a region that does not have that type
    ({"aggregator": {"pin": {"cloud": "gcp", "region": "europe-west8",
                             "instanceType": "c2-standard-4"}}},
     r"fedcloud:aggregator.pin.instanceType .*has no price in europe-west8"),
    # negative weight
    ({"weights": [[9, 1], [-1, 5]]}, r"fedcloud:weights\[1\] is \[-1, 5\]; weights cannot be "
                                     r"negative"),
    # both zero
    ({"weights": [[0, 0]]}, r"fedcloud:weights\[0\] is \[0, 0\].*To fix: use e.g. \[1, 0\]"),
    # neither a pair nor a triple
    ({"weights": [[1, 2, 3, 4]]}, r"fedcloud:weights\[0\] is \[1, 2, 3, 4\], not a \[cost, "
                                  r"latency\] or \[cost, latency, emissions\] vector"),
    ({"weights": [[0, 0, 0]]}, r"fedcloud:weights\[0\] is \[0, 0, 0\]; at least one weight"),
    # an emissions limit must be a positive number
    ({"limits": {"maxCost": 10, "maxLatencyMs": 250, "maxCo2eKg": -1}},
     r"fedcloud:limits.maxCo2eKg must be > 0"),
    ({"limits": {"maxCost": 10, "maxLatencyMs": 250, "maxCo2eKg": "lots"}},
     r"fedcloud:limits.maxCo2eKg must be a number"),
    ({"costModel": {"cpuUtilization": 1.5}}, r"fedcloud:costModel.cpuUtilization must be <= 1"),
    # limits are required (no default)
    ({"limits": None}, r"fedcloud:limits is required.*To fix: set fedcloud:limits"),
    ({"limits": {"maxCost": 0, "maxLatencyMs": 250}}, r"fedcloud:limits.maxCost must be > 0"),
    ({"limits": {"maxCost": 10, "maxLatency": 250}}, r"limits.maxLatency is not a known key.*"
                                                     r"did you mean 'maxLatencyMs'"),
    ({"currency": {"code": "won", "perUsd": 1417}}, r"fedcloud:currency.code is 'won', not an "
                                                    r"ISO 4217 code"),
    ({"aggregator": {"target": "aws"}, "clouds": ["gcp"]},
     r"fedcloud:aggregator.target is 'aws' but the clouds offered are \['gcp'\]"),
    ({"costModel": {"bandwidthMbps": 0}}, r"fedcloud:costModel.bandwidthMbps must be > 0"),
    ({"optimizer": {"method": "nsga3"}}, r"fedcloud:optimizer.method is 'nsga3'.*did you mean "
                                         r"'nsga2'"),
])
def test_bad_input(overrides: dict[str, Any], match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        request_of(raw(**overrides))


def _write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "Pulumi.bad.yaml"
    path.write_text(text)
    return path


@pytest.mark.parametrize(("text", "match"), [
    # malformed YAML
    ("config:\n  fedcloud:limits: {maxCost: 1\n", "is not valid YAML"),
    # a typo in a key name
    ("config:\n  fedcloud:limit: {maxCost: 1, maxLatencyMs: 2}\n",
     "unknown key 'fedcloud:limit'.*did you mean 'fedcloud:limits'"),
])
def test_cli_bad_stack_one_line_error(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                      text: str, match: str) -> None:
    code = main(["plan", "--config", str(_write(tmp_path, text))])
    err = capsys.readouterr().err
    assert code != 0
    assert len(err.strip().splitlines()) == 1
    assert "Traceback" not in err
    assert __import__("re").search(match, err)


def test_cli_debug_shows_the_traceback(tmp_path: Path) -> None:
    path = _write(tmp_path, "config:\n  fedcloud:limit: {maxCost: 1}\n")
    with pytest.raises(ConfigError, match="unknown key"):
        main(["--debug", "plan", "--config", str(path)])
