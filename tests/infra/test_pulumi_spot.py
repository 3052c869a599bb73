"""The spot aggregator under the SDK's mocks: ``fedcloud:aggregator.market`` reaches the VM.

A spot pick declares an AWS persistent spot request that stops when reclaimed, or a GCP Spot VM
that stops; an on-demand pick declares neither (infra/README.md, "Spot").
"""

from __future__ import annotations

from functools import cache

import pytest
from pulumi_fixtures import run_with, stack_run, stack_values, vm

from infra.preview import MockRun


@cache
def spot_run(stack: str, market: str = "spot") -> MockRun:
    agg = {**stack_values(stack)["aggregator"], "market": market}
    return run_with(stack, aggregator=agg)


def test_aws_spot_is_a_persistent_request_that_stops() -> None:
    run = spot_run("covid19-aws")
    assert run.outputs["plan"]["choice"]["market"] == "spot"
    assert run.outputs["plan"]["market"] == "spot"
    options = vm(run).inputs["instanceMarketOptions"]
    assert options == {"marketType": "spot", "spotOptions": {
        "spotInstanceType": "persistent", "instanceInterruptionBehavior": "stop"}}


def test_gcp_spot_vm_stops_and_does_not_restart_itself() -> None:
    run = spot_run("covid19-gcp")
    assert run.outputs["plan"]["choice"]["market"] == "spot"
    assert vm(run).inputs["scheduling"] == {
        "provisioningModel": "SPOT", "preemptible": True, "automaticRestart": False,
        "onHostMaintenance": "TERMINATE", "instanceTerminationAction": "STOP"}
    # Stopped when reclaimed, started again by the next `pulumi up --refresh`.
    assert vm(run).inputs["desiredStatus"] == "RUNNING"


@pytest.mark.parametrize("stack", ["covid19-aws", "covid19-gcp", "covid19-azure"])
def test_on_demand_declares_no_spot_inputs(stack: str) -> None:
    run = stack_run(stack)
    inputs = vm(run).inputs
    assert "instanceMarketOptions" not in inputs
    assert "scheduling" not in inputs and "desiredStatus" not in inputs
    assert "market" not in run.outputs["plan"]["choice"]  # on-demand plans keep their shape


def test_auto_deploys_the_spot_pick_with_the_on_demand_comparison() -> None:
    run = spot_run("covid19-aws", "auto")
    plan = run.outputs["plan"]
    first = plan["choices"][0]
    assert plan["choice"]["market"] == first["choice"]["market"] == "spot"
    assert first["vsOnDemand"]["costCutPct"] > 0
    assert first["vsOnDemand"]["onDemand"]["market"] == "onDemand"
    assert "instanceMarketOptions" in vm(run).inputs


def test_spot_on_an_azure_only_stack_fails_naming_the_key() -> None:
    import pulumi

    with pytest.raises(pulumi.RunError, match=r"fedcloud:aggregator\.market.*onDemand or auto"):
        spot_run("covid19-azure")
