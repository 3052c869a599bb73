"""Secure aggregation and differential privacy: stack keys, run config, warning, outputs.

``fedcloud:training.secureAggregation`` and ``.privacy`` parsed once (defaults from Pulumi.yaml,
hostile values refused by full key), carried into the Flower run config and back, the warning
of a stack without secure aggregation, and the ``protection`` output of both compositions.
"""

from __future__ import annotations

import contextlib
import copy
import logging
import math
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from pulumi_fixtures import run_with

from fedcloud import federation
from fedcloud.core.config import from_mapping, load_stack, project_defaults
from fedcloud.core.errors import ConfigError
from fedcloud.core.participants import VmSpec
from fedcloud.core.stack import StackConfig, load, parse
from fedcloud.core.training import PrivacySettings, TrainingSettings
from fl.app.records import METRICS
from fl.app.runconfig import FLOWER_KEYS, RunConfig, RunConfigError
from fl.initializer.training import TrainingResult
from fl.orchestrator import DispatchResult
from fl.orchestrator.results import NodePlacement, ParticipantResult

MINIMAL: dict[str, Any] = {
    "limits": {"maxCost": 100, "maxLatencyMs": 300},
    "participants": [{"name": "p", "location": {"region": "aws:us-east-1"},
                      "vms": [{"id": "vm-1", "host": "10.9.0.1", "state": "Active"}]}],
}
NEW_KEYS = {"secure_aggregation": "secure-aggregation", "dp_placement": "dp-placement",
            "dp_clipping_norm": "dp-clipping-norm",
            "dp_noise_multiplier": "dp-noise-multiplier", "dp_delta": "dp-delta"}


def stack(training: dict[str, Any] | None = None, name: str = "t") -> StackConfig:
    values = copy.deepcopy(MINIMAL)
    if training is not None:
        values["training"] = training
    return parse(from_mapping(name, "test.yaml", values))


def training(**section: Any) -> TrainingSettings:
    return stack(section).training


# --- stack keys -----------------------------------------------------------------------------

def test_defaults_are_pulumi_yamls_secure_aggregation_on_and_privacy_off() -> None:
    declared = project_defaults()["training"]
    assert declared["secureAggregation"] is True
    assert declared["privacy"] == {"placement": "off", "clippingNorm": 1.0,
                                   "noiseMultiplier": 1.0, "delta": 0.00001}
    got = training()
    assert got.secure_aggregation is True
    assert got.privacy == PrivacySettings("off", 1.0, 1.0, 1e-5)
    assert not got.privacy.enabled


def test_privacy_sub_keys_left_out_take_the_declared_defaults() -> None:
    got = training(privacy={"placement": "client", "noiseMultiplier": 0.7})
    assert got.privacy == PrivacySettings("client", 1.0, 0.7, 1e-5)
    assert got.secure_aggregation is True  # untouched by a privacy-only change
    assert training(secureAggregation=False).privacy == training().privacy


def test_an_unquoted_off_in_a_stack_file_means_off(tmp_path: Path) -> None:
    # YAML 1.1 (the stack loader) reads `placement: off` as false.
    path = tmp_path / "Pulumi.t.yaml"
    path.write_text("config:\n  fedcloud:limits: {maxCost: 100, maxLatencyMs: 300}\n"
                    "  fedcloud:participants:\n    - name: p\n"
                    "      location: {region: aws:us-east-1}\n"
                    "  fedcloud:training:\n    privacy:\n      placement: off\n"
                    "      delta: 0.001\n", encoding="utf-8")
    assert load_stack(path=path).values["training"]["privacy"]["placement"] is False
    assert load(path=path).training.privacy == PrivacySettings("off", 1.0, 1.0, 0.001)


@pytest.mark.parametrize(("section", "match"), [
    ({"secureAggregation": "maybe"},
     r"fedcloud:training\.secureAggregation must be true or false, got \"maybe\""),
    ({"secureAggregation": 1}, r"fedcloud:training\.secureAggregation must be true or false"),
    ({"privacy": "client"}, r"fedcloud:training\.privacy must be a mapping"),
    ({"privacy": [1]}, r"fedcloud:training\.privacy must be a mapping"),
    ({"privacy": {"placment": "client"}},
     r"fedcloud:training\.privacy\.placment is not a known key.*did you mean 'placement'"),
    ({"privacy": {"epsilon": 3}}, r"fedcloud:training\.privacy\.epsilon is not a known key"),
    ({"privacy": {"placement": "foo"}},
     r"fedcloud:training\.privacy\.placement is 'foo', which is not one of "
     r"\['off', 'client', 'server'\].*To fix: use one of: off, client, server"),
    ({"privacy": {"placement": "clinet"}}, r"privacy\.placement .*did you mean 'client'"),
    ({"privacy": {"placement": True}},
     r"fedcloud:training\.privacy\.placement is true.*To fix: set "
     r"fedcloud:training\.privacy\.placement to client or server"),
    ({"privacy": {"placement": 3}}, r"privacy\.placement must be a non-empty string, got 3"),
    ({"privacy": {"delta": 0}}, r"fedcloud:training\.privacy\.delta must be > 0, got 0"),
    ({"privacy": {"delta": 1}},
     r"fedcloud:training\.privacy\.delta must be < 1, got 1.*To fix: set "
     r"fedcloud:training\.privacy\.delta between 0 and 1"),
    ({"privacy": {"delta": "small"}}, r"privacy\.delta must be a number, got \"small\""),
    ({"privacy": {"placement": "client", "noiseMultiplier": 0}},
     r"fedcloud:training\.privacy\.noiseMultiplier is 0 with placement 'client'.*To fix: set "
     r"fedcloud:training\.privacy\.noiseMultiplier > 0"),
    ({"privacy": {"placement": "server", "noiseMultiplier": 0}},
     r"privacy\.noiseMultiplier is 0 with placement 'server'"),
    ({"privacy": {"noiseMultiplier": -1}}, r"privacy\.noiseMultiplier must be >= 0, got -1"),
    ({"privacy": {"noiseMultiplier": "nan"}}, r"privacy\.noiseMultiplier must be finite"),
    ({"privacy": {"clippingNorm": 0}}, r"fedcloud:training\.privacy\.clippingNorm must be > 0"),
    ({"privacy": {"clippingNorm": [1]}}, r"privacy\.clippingNorm must be a number"),
])
def test_hostile_values_name_the_full_key_and_the_fix(section: dict[str, Any],
                                                      match: str) -> None:
    with pytest.raises(ConfigError, match=match) as err:
        training(**section)
    assert "\n" not in str(err.value)


def test_no_noise_is_fine_while_privacy_is_off() -> None:
    assert training(privacy={"noiseMultiplier": 0}).privacy.noise_multiplier == 0


# --- run config -----------------------------------------------------------------------------

def test_the_new_fields_have_flower_keys_and_defaults() -> None:
    assert {k: FLOWER_KEYS[k] for k in NEW_KEYS} == NEW_KEYS
    base = RunConfig(model="covid_cnn", width=2, image_size=8, num_classes=3, rounds=1,
                     local_epochs=1, batch_size=2, learning_rate=0.1, fraction_train=1.0,
                     min_nodes=2, phase_timeout_s=1, node_wait_s=0, seed=0)
    assert (base.secure_aggregation, base.dp_placement, base.dp_clipping_norm,
            base.dp_noise_multiplier, base.dp_delta) == (True, "off", 1.0, 1.0, 1e-5)
    # A run config from before these keys (no such key in it) reads as the defaults.
    old = {k: v for k, v in base.to_flower().items() if k not in NEW_KEYS.values()}
    assert RunConfig.from_flower(old) == base


@pytest.mark.parametrize("section", [
    {},
    {"secureAggregation": False},
    {"privacy": {"placement": "client", "clippingNorm": 2.5, "noiseMultiplier": 0.8,
                 "delta": 0.0001}},
    {"secureAggregation": False, "privacy": {"placement": "server", "delta": 1e-7}},
])
def test_stack_settings_round_trip_through_flowers_parser(section: dict[str, Any]) -> None:
    from flwr.common.config import parse_config_args

    settings = training(**section)
    cfg = settings.run_config("/tmp/registry", "fedcloud-t", stack="t")
    flower = cfg.to_flower()
    assert flower["secure-aggregation"] is settings.secure_aggregation
    assert (flower["dp-placement"], flower["dp-clipping-norm"], flower["dp-noise-multiplier"],
            flower["dp-delta"]) == (settings.privacy.placement, settings.privacy.clipping_norm,
                                    settings.privacy.noise_multiplier, settings.privacy.delta)
    parsed = parse_config_args([settings.run_config_arg("/tmp/registry", "fedcloud-t",
                                                        stack="t")])
    assert RunConfig.from_flower(parsed) == cfg


@pytest.mark.parametrize(("section", "label"), [
    ({}, "secagg+"),
    ({"secureAggregation": False}, "plain"),
    ({"privacy": {"placement": "client"}}, "secagg+ dp(client)"),
    ({"secureAggregation": False, "privacy": {"placement": "server"}}, "plain dp(server)"),
])
def test_protection_label(section: dict[str, Any], label: str) -> None:
    cfg = training(**section).run_config()
    assert cfg.protection == label
    assert cfg.dp is (label.endswith(")"))


@pytest.mark.parametrize(("changes", "match"), [
    ({"secure-aggregation": "true"}, r"'secure-aggregation' must be bool, got 'true'"),
    ({"secure-aggregation": 1}, r"'secure-aggregation' must be bool"),
    ({"dp-placement": "foo"},
     r"'dp-placement' is 'foo'; use one of \['off', 'client', 'server'\]"),
    ({"dp-placement": 1}, r"'dp-placement' must be str"),
    ({"dp-clipping-norm": 0.0}, r"'dp-clipping-norm' is out of range"),
    ({"dp-clipping-norm": math.inf}, r"'dp-clipping-norm' is out of range"),
    ({"dp-clipping-norm": "big"}, r"'dp-clipping-norm' must be float"),
    ({"dp-noise-multiplier": -0.5}, r"'dp-noise-multiplier' is out of range"),
    ({"dp-noise-multiplier": math.nan}, r"'dp-noise-multiplier' is out of range"),
    ({"dp-placement": "client", "dp-noise-multiplier": 0.0},
     r"'dp-noise-multiplier' is 0 with dp-placement 'client'"),
    ({"dp-placement": "server", "dp-noise-multiplier": 0},
     r"'dp-noise-multiplier' is 0 with dp-placement 'server'"),
    ({"dp-delta": 0.0}, r"'dp-delta' is out of range"),
    ({"dp-delta": 1.0}, r"'dp-delta' is out of range"),
    ({"dp-delta": True}, r"'dp-delta' must be float"),
])
def test_run_config_refuses_bad_values_by_flower_key(changes: dict[str, Any],
                                                     match: str) -> None:
    good = training().run_config().to_flower()
    with pytest.raises(RunConfigError, match=match) as err:
        RunConfig.from_flower({**good, **changes})
    assert "\n" not in str(err.value)
    assert RunConfig.from_flower({**good, "dp-noise-multiplier": 0.0}).dp_noise_multiplier == 0


def test_the_staged_app_declares_the_new_keys(tmp_path: Path) -> None:
    import tomllib

    from fl.initializer.bundle import stage_app

    cfg = training(privacy={"placement": "client"}).run_config()
    app = stage_app(tmp_path / "app", cfg)
    declared = tomllib.loads((app / "pyproject.toml").read_text())["tool"]["flwr"]["app"]["config"]
    assert {k: declared[k] for k in NEW_KEYS.values()} == {
        "secure-aggregation": True, "dp-placement": "client", "dp-clipping-norm": 1.0,
        "dp-noise-multiplier": 1.0, "dp-delta": 1e-5}


# --- the warning ----------------------------------------------------------------------------

def test_a_stack_without_secure_aggregation_is_warned_about_once(
        caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger="fedcloud")
    federation.validate(stack({"secureAggregation": False}, name="clinics"))
    warned = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warned) == 1
    text = warned[0].getMessage()
    assert "stack 'clinics'" in text and "fedcloud:training.secureAggregation is false" in text
    assert "each participant's model update in clear" in text
    caplog.clear()
    federation.validate(stack(name="clinics"))
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]


# --- outputs --------------------------------------------------------------------------------

def test_protection_output_per_option() -> None:
    on = training().protection_output()
    assert on["secureAggregation"] is True and on["privacy"] is None
    assert set(on) == {"secureAggregation", "privacy", "aggregatorSees", "participantsSee"}
    assert any("only the sum" in s and "masked" in s for s in on["aggregatorSees"])
    assert not any("differential" in s for s in on["aggregatorSees"] + on["participantsSee"])
    assert any("confusion matrix" in s for s in on["aggregatorSees"])
    assert any("global model" in s for s in on["participantsSee"])
    off = training(secureAggregation=False).protection_output()
    assert any("every participant's model update in clear" in s for s in off["aggregatorSees"])
    assert not any("only the sum" in s for s in off["aggregatorSees"])
    client = training(privacy={"placement": "client", "delta": 0.001}).protection_output()
    assert client["privacy"] == {"placement": "client", "clippingNorm": 1.0,
                                 "noiseMultiplier": 1.0, "delta": 0.001}
    assert any("delta=0.001" in s for s in client["participantsSee"])
    assert any("holds against the aggregator too" in s for s in client["aggregatorSees"])
    server = training(privacy={"placement": "server"}).protection_output()
    assert any("before it adds the noise" in s and "does not hold against the aggregator" in s
               for s in server["aggregatorSees"])
    for out in (on, off, client, server):
        assert all(isinstance(s, str) and "\n" not in s
                   for s in out["aggregatorSees"] + out["participantsSee"])


class _StubOrchestrator:
    """Dispatches every participant at once; nothing runs."""

    def __init__(self, participants: Any, *args: Any, **kwargs: Any) -> None:
        self.participants = list(participants)

    def dispatch(self) -> DispatchResult:
        out = DispatchResult()
        for p in self.participants:
            vm = VmSpec(id="vm-1", host="10.9.0.1", port=22, user="u", key_path=Path("/k"),
                        host_key_fingerprint=None, state="Active", vcpus=2, memory_gb=4,
                        disk_gb=20)
            out[p.name] = ParticipantResult(p.name, NodePlacement(p.name, vm, "/w", 1, 2, 0.0))
        return out

    def watcher(self, placements: Any) -> contextlib.AbstractContextManager[None]:
        return contextlib.nullcontext()

    def stop(self, placements: Any) -> None:
        pass


class _StubCli:
    def __init__(self, home: Path) -> None:
        self.home = home

    def write_connection(self, *args: Any, **kwargs: Any) -> None:
        pass


def _trained(rounds: list[dict[str, Any]]) -> TrainingResult:
    return TrainingResult(run_id=9, status="COMPLETED", detail="2 round(s)",
                          flower_status="finished:completed", rounds=rounds, store_run_id=None,
                          node_ids={"p": 1}, elapsed_s=1.0, network_bytes=1)


@contextlib.contextmanager
def _local_federation(monkeypatch: pytest.MonkeyPatch, trained: TrainingResult,
                      seen: dict[str, Any]) -> Iterator[None]:
    """``run_federation`` with the SuperLink, the VMs and Flower replaced by stubs."""
    def start_training(**kwargs: Any) -> TrainingResult:
        seen["run_config"] = kwargs["run_config"]
        return trained

    monkeypatch.setattr(federation, "FlwrCli", _StubCli)
    monkeypatch.setattr(federation, "register_nodes", lambda *a, **k: {"p": 1})
    monkeypatch.setattr(federation, "Orchestrator", _StubOrchestrator)
    monkeypatch.setattr(federation, "SuperLinkNodes", lambda *a, **k: None)
    monkeypatch.setattr(federation, "start_training", start_training)
    yield


def test_both_compositions_give_the_same_protection_output(
        monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    section = {"secureAggregation": False,
               "privacy": {"placement": "server", "noiseMultiplier": 1.3, "delta": 1e-6}}
    # The Pulumi program, under the SDK's mocks.
    pulumi_out = run_with("covid19-aws", training=section).outputs["protection"]
    # The local composition: the federation path, then its outputs.
    cfg = stack(section)
    metrics = dict.fromkeys(METRICS, 0.5)
    trained = _trained([{"round": 1, "metrics": metrics, "dp_epsilon": 4.0},
                        {"round": 2, "metrics": metrics, "dp_epsilon": 5.25}])
    seen: dict[str, Any] = {}
    aggregator = federation.Aggregator(address="127.0.0.1:1", ca_cert=tmp_path / "ca.pem",
                                       node_keys={"p": (tmp_path / "k", tmp_path / "k.pub")},
                                       tracking_uri="", store=None)
    transport: Any = None  # no VM is reached
    with _local_federation(monkeypatch, trained, seen):
        fed = federation.run_federation(cfg, cfg.participants, aggregator, transport)
    local_out = federation.outputs({}, {}, fed)
    assert local_out["protection"] == pulumi_out == cfg.training.protection_output()
    assert pulumi_out["secureAggregation"] is False
    assert pulumi_out["privacy"] == {"placement": "server", "clippingNorm": 1.0,
                                     "noiseMultiplier": 1.3, "delta": 1e-6}
    assert seen["run_config"].protection == "plain dp(server)"  # what the ServerApp reads
    assert local_out["training"]["epsilon"] == 5.25  # the last round's account


def test_the_pulumi_programs_default_protection_is_secure_aggregation() -> None:
    out = run_with("covid19-aws").outputs["protection"]
    assert out == load("covid19-aws").training.protection_output()
    assert out["secureAggregation"] is True and out["privacy"] is None


@pytest.mark.parametrize(("rounds", "epsilon"), [
    ([], None),
    ([{"round": 1}], None),  # no differential privacy: the ServerApp writes no dp_epsilon
    ([{"round": 1, "dp_epsilon": 1.5}, {"round": 2, "dp_epsilon": 2}], 2.0),
    ([{"round": 1, "dp_epsilon": 1.5}, {"round": 2}], None),
    ([{"round": 1, "dp_epsilon": math.inf}], None),  # not JSON
    ([{"round": 1, "dp_epsilon": "3"}], None),
    ([{"round": 1, "dp_epsilon": True}], None),
])
def test_training_output_epsilon_is_the_last_rounds(rounds: list[dict[str, Any]],
                                                    epsilon: float | None) -> None:
    out = federation.training_output(_trained(rounds))
    assert out["epsilon"] == epsilon
    assert federation.training_output(None)["epsilon"] is None
