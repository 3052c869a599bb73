"""The stack read once: one StackConfig from a stack file or from Pulumi's config, validated."""

from __future__ import annotations

import copy
import dataclasses
from typing import Any

import pulumi
import pytest

from fedcloud.core.config import available_stacks, from_mapping
from fedcloud.core.errors import ConfigError
from fedcloud.core.stack import StackConfig, load, parse
from infra.preview import stack_config
from infra.program import read_pulumi_config

MINIMAL: dict[str, Any] = {
    "limits": {"maxCost": 100, "maxLatencyMs": 300},
    "participants": [{"name": "p", "location": {"region": "aws:us-east-1"},
                      "vms": [{"id": "vm-1", "host": "10.9.0.1", "state": "Active"}]}],
}


def stack(**changes: Any) -> StackConfig:
    values = copy.deepcopy(MINIMAL)
    values.update(changes)
    return parse(from_mapping("t", "test.yaml", values))


def without_source(cfg: StackConfig) -> dict[str, Any]:
    doc = dataclasses.asdict(cfg)
    doc.pop("source")
    doc.pop("raw")
    doc["plan"].pop("source")
    return doc


@pytest.mark.parametrize("name", available_stacks())
def test_the_file_and_pulumi_config_give_the_same_stack(name: str) -> None:
    from_file = load(name=name)
    pulumi.runtime.set_all_config(stack_config(name), [])
    try:
        from_pulumi = parse(read_pulumi_config(name))
    finally:
        pulumi.runtime.set_all_config({}, [])
    assert without_source(from_pulumi) == without_source(from_file)
    assert from_pulumi.source == "pulumi config" and from_file.source.endswith(f"{name}.yaml")


def test_defaults_merge_once_key_by_key() -> None:
    cfg = stack(training={"rounds": 7})
    assert cfg.training.rounds == 7
    assert cfg.training.batch_size == 16  # Pulumi.yaml's default for the sub-key left out
    assert cfg.plan.cost_model.rounds == 7  # the cost model follows training unless it says
    assert cfg.best_model.metric == "f1" and cfg.plan.baseline is None


@pytest.mark.parametrize(("changes", "match"), [
    ({"bestModel": {"metric": "f2", "min": []}},
     r"fedcloud:bestModel.metric is 'f2'.*did you mean 'f1'"),
    ({"bestModel": {"metric": "f1", "min": ["accuracy>0.9"]}},
     r"fedcloud:bestModel.min\[0\] is 'accuracy>0.9', not 'METRIC=NUMBER'"),
    ({"orchestrator": {"hostKeyPolicy": "trust"}},
     r"fedcloud:orchestrator.hostKeyPolicy is 'trust'"),
    ({"localData": {"trainPerParticipant": 10**9}},
     r"fedcloud:localData.trainPerParticipant must be <= 100000"),
])
def test_errors_name_the_stack_key(changes: dict[str, Any], match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        stack(**changes)


def test_a_vm_address_given_twice_is_refused() -> None:
    participants = copy.deepcopy(MINIMAL["participants"])
    participants.append({"name": "q", "location": {"region": "aws:us-east-1"},
                         "vms": [{"id": "vm-9", "host": "10.9.0.1", "state": "Active"}]})
    with pytest.raises(ConfigError, match=r"participants\[1\].vms\[0\].host is 10.9.0.1:22, "
                       r"the address of p/vm-1 too"):
        stack(participants=participants)
    participants[1]["vms"][0]["port"] = 2222  # another sshd on the same machine is another VM
    assert len(stack(participants=participants).participants) == 2


def test_a_huge_value_is_cut_in_the_message() -> None:
    huge = "x" * 10_000_000
    with pytest.raises(ConfigError) as err:
        stack(orchestrator={"hostKeyPolicy": huge})
    assert len(str(err.value)) < 400 and "xxx..." in str(err.value)
    with pytest.raises(ConfigError) as err:
        stack(currency={"code": huge, "perUsd": 1})
    assert len(str(err.value)) < 400


@pytest.mark.parametrize("key,value", [("maxResumes", -1), ("aggregatorWaitS", 0),
                                       ("resume", "yes")])
def test_resume_settings_are_checked_by_key(key: str, value: object) -> None:
    default = stack().training
    assert (default.resume, default.max_resumes, default.aggregator_wait_s) == (True, 5, 180.0)
    assert stack(training={"resume": False}).training.run_config().resume is False
    with pytest.raises(ConfigError, match=f"training.{key}"):
        stack(training={key: value})
