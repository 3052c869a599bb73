"""Policy checks on the Pulumi program, run under the SDK's mocks for every cloud stack.

Written like pulumi/examples ``testing-unit-py``: each test states one policy and checks the
resources the real ``__main__.py`` declared. The runs are shared per session (see
``tests/pulumi_fixtures.py``); a run that the program rejects raises ``pulumi.RunError``.
"""

from __future__ import annotations

import json
import os
import shlex
import subprocess
import sys
from functools import cache
from typing import Any

import pulumi
import pytest
import yaml
from cryptography import x509
from pulumi_fixtures import (
    ADDRESS_TYPES,
    CLOUD_STACKS,
    FIXTURE_HOME,
    cloud_of,
    inbound_rules,
    operator_home,
    run_with,
    stack_run,
    user_data,
    user_data_is_secret,
    vm,
)

from fedcloud.core.config import ROOT, load_stack
from fedcloud.core.flower import FLOWER_QUIET_ENV, SUPERLINK_PORT
from fedcloud.core.participants import parse_participants
from infra.component import TYPE_TOKEN
from infra.preview import DYNAMIC_PREFIX, MockRun, run_program, stack_config
from optimizer import PlanRequest, plan
from optimizer.result import Choice

CLOUD_PREFIX = {"aws": ("aws:",), "gcp": ("gcp:",), "azure": ("azure-native:",)}


def request_of(config: Any) -> PlanRequest:
    """The optimizer's request for a stack, as both compositions build it."""
    from fedcloud.core.stack import parse
    from fedcloud.federation import plan_request

    return plan_request(parse(config))


@cache
def optimizer_choice(name: str) -> Choice:
    """The optimizer's choice for the stack, computed independently of the program."""
    return plan(request_of(load_stack(name))).choice


@pytest.fixture(params=CLOUD_STACKS)
def run(request: pytest.FixtureRequest) -> MockRun:
    return stack_run(request.param)


def cloud_resources(run: MockRun) -> list:
    prefixes = CLOUD_PREFIX[cloud_of(run)]
    return [r for r in run.resources if r.type.startswith(prefixes)
            and not r.type.startswith("pulumi:providers:")]


# --- placement ----------------------------------------------------------------------------------

def test_region_and_instance_type_are_the_optimizers_choice(run: MockRun) -> None:
    choice = optimizer_choice(run.stack)
    agg = run.outputs["aggregator"]
    assert (agg["cloud"], agg["region"], agg["instanceType"]) == (
        choice.cloud, choice.region, choice.instance_type)
    machine = vm(run)
    if choice.cloud == "aws":
        provider = run.one("pulumi:providers:aws")
        assert provider.inputs["region"] == choice.region
        assert machine.inputs["instanceType"] == choice.instance_type
        # every AWS resource goes through the regional provider
        assert all(r.provider and "::aggregator-aws::" in r.provider
                   for r in cloud_resources(run))
    elif choice.cloud == "gcp":
        assert machine.inputs["machineType"] == choice.instance_type
        assert machine.inputs["zone"].startswith(f"{choice.region}-")
        assert run.one(ADDRESS_TYPES["gcp"]).inputs["region"] == choice.region
        assert run.one("gcp:compute/subnetwork:Subnetwork").inputs["region"] == choice.region
    else:
        assert machine.inputs["hardwareProfile"]["vmSize"] == choice.instance_type
        located = [r for r in cloud_resources(run) if "location" in r.inputs]
        assert len(located) >= 6
        assert {r.inputs["location"] for r in located} == {choice.region}


def test_stack_pinned_to_a_cloud_stays_there() -> None:
    for cloud in ("aws", "gcp", "azure"):
        assert cloud_of(stack_run(f"covid19-{cloud}")) == cloud


# --- network policy -----------------------------------------------------------------------------

def expected_sources(name: str) -> tuple[list[str], list[str]]:
    raw = load_stack(name)
    operator = raw.values["operatorCidr"]
    participants = [p.egress_cidr for p in parse_participants(raw)]
    return [operator], sorted({operator, *participants})


def test_only_ssh_and_superlink_are_open(run: MockRun) -> None:
    assert set(inbound_rules(run)) == {22, SUPERLINK_PORT}


def test_ssh_only_from_the_operator(run: MockRun) -> None:
    operator, _ = expected_sources(run.stack)
    assert inbound_rules(run)[22] == operator


def test_superlink_lists_exactly_participants_and_operator(run: MockRun) -> None:
    _, superlink = expected_sources(run.stack)
    assert inbound_rules(run)[SUPERLINK_PORT] == superlink
    assert len(superlink) == len(parse_participants(load_stack(run.stack))) + 1


def test_nothing_is_open_to_the_world(run: MockRun) -> None:
    for port, sources in inbound_rules(run).items():
        assert "0.0.0.0/0" not in sources, port
        assert "*" not in sources and "Internet" not in sources, port


def test_gcp_uses_its_own_network_not_default() -> None:
    run = stack_run("covid19-gcp")
    network = run.one("gcp:compute/network:Network")
    assert network.inputs["autoCreateSubnetworks"] is False
    for fw in run.of_type("gcp:compute/firewall:Firewall"):
        assert fw.inputs["network"] == f"{network.name}-id"
        assert fw.inputs["targetTags"] == vm(run).inputs["tags"]


def test_allow_world_opens_only_the_superlink_with_a_warning() -> None:
    run = run_with("covid19-aws", allowWorld="true")
    rules = inbound_rules(run)
    assert rules[SUPERLINK_PORT] == ["0.0.0.0/0"]
    assert "0.0.0.0/0" not in rules[22]
    assert any("allowWorld is true" in w for w in run.warnings)


# --- bootstrap ----------------------------------------------------------------------------------

def test_cloud_init_runs_the_superlink_with_tls_and_node_auth(run: MockRun) -> None:
    doc = yaml.safe_load(user_data(run))
    unit = next(f["content"] for f in doc["write_files"]
                if f["path"].endswith("fedcloud-superlink.service"))
    exec_start = next(line for line in unit.splitlines() if line.startswith("ExecStart="))
    argv = shlex.split(exec_start.removeprefix("ExecStart="))
    for flag in ("--ssl-ca-certfile", "--ssl-certfile", "--ssl-keyfile",
                 "--enable-supernode-auth", "--database",
                 "--disable-runtime-dependency-installation"):
        assert flag in argv, flag
    assert argv[argv.index("--port") + 1] == str(SUPERLINK_PORT)
    env = next(f["content"] for f in doc["write_files"] if f["path"] == "/etc/fedcloud/flower.env")
    for key, value in FLOWER_QUIET_ENV.items():
        assert f"{key}={value}" in env


def test_cloud_init_carries_the_stacks_certificates(run: MockRun) -> None:
    doc = yaml.safe_load(user_data(run))
    files = {f["path"]: f["content"] for f in doc["write_files"]}
    assert files["/etc/fedcloud/tls/ca.pem"] == run.outputs["aggregator"]["caCert"]
    assert "PRIVATE KEY" in files["/etc/fedcloud/tls/server.key"]


def test_server_certificate_names_the_static_address_and_loopback() -> None:
    """The chicken-and-egg: the address exists before the VM, so the cert in its user data fits."""
    run = stack_run("covid19-azure", real_certs=True)
    doc = yaml.safe_load(user_data(run))
    pem = next(f["content"] for f in doc["write_files"]
               if f["path"] == "/etc/fedcloud/tls/server.pem")
    cert = x509.load_pem_x509_certificate(pem.encode())
    sans = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    ips = {str(ip) for ip in sans.get_values_for_type(x509.IPAddress)}
    assert ips == {run.outputs["aggregator"]["publicIp"], "127.0.0.1"}
    assert run.outputs["aggregator"]["superlinkAddress"] == (
        f"{run.outputs['aggregator']['publicIp']}:{SUPERLINK_PORT}")


# --- secrets ------------------------------------------------------------------------------------

def test_user_data_and_private_keys_are_secret(run: MockRun) -> None:
    assert user_data_is_secret(run)
    dispatch = run.one(f"{DYNAMIC_PREFIX}TrainingDispatch")
    for key in ("ca_key", "server_key", "node_keys"):
        assert dispatch.redacted[key] == "[secret]", key
    assert "PRIVATE KEY" not in json.dumps(run.outputs)
    assert "aggregator" not in run.secret_outputs  # the CA certificate is meant to be shared


# --- outputs ------------------------------------------------------------------------------------

def test_outputs_have_the_documented_keys(run: MockRun) -> None:
    assert set(run.outputs) == {"aggregator", "plan", "participants", "training", "protection"}
    protection = run.outputs["protection"]
    assert protection["secureAggregation"] is True and protection["privacy"] is None
    assert protection["aggregatorSees"] and protection["participantsSee"]
    assert {"cloud", "region", "instanceType", "publicIp", "superlinkAddress",
            "caCert"} <= set(run.outputs["aggregator"])
    assert {"costUsd", "costLocal", "latencyMs", "weights", "baseline", "cut"} <= set(
        run.outputs["plan"])
    assert run.outputs["plan"]["cut"]["costCutPct"] == pytest.approx(
        run.outputs["plan"]["choices"][0]["vsBaseline"]["costCutPct"])
    names = {p.name for p in parse_participants(load_stack(run.stack))}
    assert set(run.outputs["participants"]) == names
    for entry in run.outputs["participants"].values():
        assert {"vm", "attempts"} <= set(entry)
    assert {"runId", "status", "rounds", "bestModel"} <= set(run.outputs["training"])


# --- structure and tags -------------------------------------------------------------------------

def test_one_component_owns_every_cloud_resource(run: MockRun) -> None:
    component = run.one(TYPE_TOKEN)
    assert component.name == "aggregator" and not component.custom
    owned = [*cloud_resources(run), run.one(f"{DYNAMIC_PREFIX}DeploymentCerts")]
    for res in owned:
        assert res.parent == TYPE_TOKEN, res.name
        assert res.name.startswith("aggregator-"), res.name
    keys = [(r.type, r.name) for r in run.resources]
    assert len(keys) == len(set(keys)), "duplicate resource names"


def test_health_waits_for_the_vm_and_dispatch_for_health(run: MockRun) -> None:
    health = run.one(f"{DYNAMIC_PREFIX}SuperLinkHealth")
    dispatch = run.one(f"{DYNAMIC_PREFIX}TrainingDispatch")
    assert health.inputs["address"] == run.outputs["aggregator"]["superlinkAddress"]
    assert dispatch.inputs["superlink_address"] == health.inputs["address"]
    order = [r.name for r in run.resources]
    assert order.index(vm(run).name) < order.index(health.name) < order.index(dispatch.name)


def test_resources_carry_the_stack_tags(run: MockRun) -> None:
    want = {"project": "fedcloud", "stack": run.stack}
    cloud = cloud_of(run)
    if cloud == "aws":
        tags = json.loads(run.one("pulumi:providers:aws").inputs["defaultTags"])["tags"]
        assert want.items() <= tags.items()
    elif cloud == "gcp":
        for typ in ("gcp:compute/instance:Instance", "gcp:compute/address:Address"):
            assert want.items() <= run.one(typ).inputs["labels"].items()
    else:
        taggable = [r for r in cloud_resources(run) if r.type != "azure-native:network:Subnet"]
        for res in taggable:
            assert want.items() <= res.inputs["tags"].items(), res.name


# --- bad config ---------------------------------------------------------------------------------

@pytest.mark.parametrize(("changes", "match"), [
    # unknown cloud name, with a did-you-mean
    ({"aggregator": {"target": "awz", "sshPublicKeyPath": "~/.ssh/id_ed25519.pub"}},
     r"target is 'awz'.*did you mean 'aws'"),
    # no participants at all
    ({"participants": None}, r"fedcloud:participants is required.*To fix"),
    # a malformed address
    ({"operatorCidr": "192.0.2.300/32"}, r"operatorCidr is '192\.0\.2\.300/32', not an IP"),
    # the operator's default loopback address cannot reach a cloud VM
    ({"operatorCidr": None}, r"operatorCidr is 127\.0\.0\.1/32.*not a public address"),
    # no SSH key for the VM
    ({"aggregator": {"target": "aws"}}, r"sshPublicKeyPath is not set.*pulumi config set"),
    # the local stack belongs to `fedcloud up`, not to the Pulumi program
    ({"aggregator": {"target": "local"}}, r"fedcloud up --stack"),
])
def test_bad_config_raises_run_error_with_the_fix(changes: dict, match: str) -> None:
    with pytest.raises(pulumi.RunError, match=match):
        run_with("covid19-aws", **changes)


def test_malformed_participant_address_raises_run_error() -> None:
    participants = yaml.safe_load(
        (ROOT / "stacks" / "Pulumi.covid19-aws.yaml").read_text())["config"][
        "fedcloud:participants"]
    participants[1]["egressCidr"] = "198.51.100.20/33"
    with pytest.raises(pulumi.RunError, match=r"participants\[1\]\.egressCidr.*To fix"):
        run_with("covid19-aws", participants=participants)


# --- isolation ----------------------------------------------------------------------------------

_PROBE = """
import json, os, sys
os.environ["HOME"] = sys.argv[2]
from infra.preview import run_stack
run = run_stack(sys.argv[1])
print(json.dumps({"cloud": run.outputs["aggregator"]["cloud"],
                  "modules": sorted(m for m in sys.modules if m.startswith("pulumi_"))}))
"""


def test_an_aws_stack_imports_only_the_aws_sdk() -> None:
    # A fresh interpreter: this test process has imported every cloud's SDK by now.
    env = {**os.environ, **FLOWER_QUIET_ENV}
    out = subprocess.run([sys.executable, "-c", _PROBE, "covid19-aws", str(FIXTURE_HOME)],
                         cwd=ROOT,
                         env=env, capture_output=True, text=True, timeout=300, check=True)
    report = json.loads(out.stdout.strip().splitlines()[-1])
    assert report["cloud"] == "aws"
    roots = {m.split(".")[0] for m in report["modules"]}
    assert roots == {"pulumi_aws"}, roots


def test_aws_credentials_from_stack_config_reach_the_explicit_provider() -> None:
    """`fedcloud auth add aws` sets aws:* config, which an explicit provider does not read."""
    config = {**stack_config("covid19-aws"), "aws:accessKey": "AKIAEXAMPLE",
              "aws:secretKey": "not-a-real-secret"}
    with operator_home():
        run = run_program("covid19-aws-creds", config, secret_keys=["aws:secretKey"])
    provider = run.one("pulumi:providers:aws")
    assert provider.inputs["accessKey"] == "AKIAEXAMPLE"
    assert provider.redacted["secretKey"] == "[secret]"
    assert provider.inputs["secretKey"] == "not-a-real-secret"


def test_boot_disk_size_comes_from_pulumi_yaml() -> None:
    run = stack_run("covid19-aws")
    assert vm(run).inputs["rootBlockDevice"]["volumeSize"] == 30


def test_a_secret_registry_uri_keeps_the_dispatch_config_secret() -> None:
    config = {**stack_config("covid19-aws"),
              "fedcloud:registry": json.dumps({"trackingUri": "https://u:token@mlflow.example"})}
    with operator_home():
        run = run_program("covid19-aws-secret", config, secret_keys=["fedcloud:registry"])
    dispatch = run.one(f"{DYNAMIC_PREFIX}TrainingDispatch")
    assert dispatch.redacted["config"] == "[secret]"
    assert "token@mlflow" in dispatch.inputs["config"]
    assert stack_run("covid19-aws").one(f"{DYNAMIC_PREFIX}TrainingDispatch").redacted[
        "config"] != "[secret]"
