"""Thin ``pulumi.dynamic`` providers: the stack's certificates, SuperLink health, training dispatch.

Each provider adapts Pulumi's create/diff/update/delete to plain functions it is given by the
program (``__main__.py``), so infra imports no other part. The provider object is pickled with
``dill`` (functions by reference) and holds no sockets, clients or secrets; see infra/README.md.
"""

from __future__ import annotations

import hashlib
import tempfile
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import pulumi
from pulumi.dynamic import CreateResult, DiffResult, ResourceProvider, UpdateResult

from fedcloud.core.errors import FedcloudError, TrainingError

HEALTH_TIMEOUT_S = 900.0  # first boot: apt, venv, torch CPU wheel, flwr, mlflow
HEALTH_POLL_S = 10.0
CERT_SECRET_OUTPUTS = ["ca_key", "server_key", "node_keys", "ssh_host_key"]

IssueFn = Callable[[Mapping[str, Any], Mapping[str, Any] | None], dict[str, Any]]
ProbeFn = Callable[[str, str], bool]
RunFn = Callable[[Mapping[str, Any]], dict[str, Any]]
PullFn = Callable[[Mapping[str, Any]], None]


# --- certificates -------------------------------------------------------------------------------

class DeploymentCertsProvider(ResourceProvider):
    """The stack's CA, SuperLink server certificate and SuperNode keys, kept in Pulumi state.

    A changed address or participant list is an update (the CA and existing node keys are kept,
    so participants need nothing new); only ``pulumi destroy`` forgets the CA.

    Args:
        issue: ``(props, olds | None) -> outputs``: issues or extends the material.
    """

    def __init__(self, issue: IssueFn) -> None:
        super().__init__()
        self.issue = issue

    def create(self, props: dict[str, Any]) -> CreateResult:
        """Issue everything."""
        outs = self.issue(props, None)
        digest = hashlib.sha256(outs["ca_cert"].encode("ascii")).hexdigest()[:16]
        return CreateResult(id_=f"ca-{digest}", outs=outs)

    def diff(self, _id: str, olds: dict[str, Any], news: dict[str, Any]) -> DiffResult:
        """Report changed SANs or participants (an in-place update)."""
        changed = [k for k in ("sans", "participants") if list(olds.get(k) or []) != list(news[k])]
        return DiffResult(changes=bool(changed), replaces=[], stables=["ca_cert", "ca_key"],
                          delete_before_replace=False)

    def update(self, _id: str, olds: dict[str, Any], news: dict[str, Any]) -> UpdateResult:
        """Reissue the server certificate / add node keys, keeping the CA."""
        return UpdateResult(outs=self.issue(news, olds))


# --- SuperLink health ---------------------------------------------------------------------------

def wait_healthy(address: str, ca_cert_pem: str, probe: ProbeFn,
                 timeout_s: float = HEALTH_TIMEOUT_S, poll_s: float = HEALTH_POLL_S,
                 sleep: Callable[[float], None] = time.sleep,
                 clock: Callable[[], float] = time.monotonic) -> int:
    """Poll ``GET https://ADDRESS/health`` (verified against the stack's CA) until it answers.

    Args:
        address: ``host:port`` of the SuperLink.
        ca_cert_pem: The stack's CA certificate (PEM text).
        timeout_s: Give up after this long.
        poll_s: Pause between probes.
        probe: ``(address, ca_path) -> bool``, one TLS health request.
        sleep: Injected for tests.
        clock: Injected for tests.

    Returns:
        The number of probes made.

    Raises:
        TrainingError: Not healthy within ``timeout_s`` (with what to check).
    """
    with tempfile.TemporaryDirectory(prefix="fedcloud-ca-") as tmp:
        ca_path = Path(tmp) / "ca.pem"
        ca_path.write_text(ca_cert_pem, encoding="ascii")
        deadline = clock() + timeout_s
        probes = 0
        while True:
            probes += 1
            if probe(address, str(ca_path)):
                return probes
            if clock() >= deadline:
                raise TrainingError(
                    f"the SuperLink at {address} did not answer /health over TLS within "
                    f"{timeout_s:.0f} s.",
                    "check that fedcloud:operatorCidr is this machine's public address, then "
                    "read the VM's boot log (cloud-init) and 'journalctl -u "
                    "fedcloud-superlink' over SSH; run 'pulumi up' again to retry.",
                )
            sleep(poll_s)


class SuperLinkHealthProvider(ResourceProvider):
    """Create = wait until the SuperLink answers ``/health`` over TLS; delete = nothing."""

    def __init__(self, probe: ProbeFn) -> None:
        super().__init__()
        self.probe = probe

    def create(self, props: dict[str, Any]) -> CreateResult:
        """Wait for health; fail the deployment with the fix when it never comes."""
        probes = wait_healthy(props["address"], props["ca_cert"], self.probe,
                              float(props.get("timeout_s") or HEALTH_TIMEOUT_S))
        return CreateResult(id_=f"health-{props['address']}",
                            outs={**props, "healthy": True, "probes": probes})

    def diff(self, _id: str, olds: dict[str, Any], news: dict[str, Any]) -> DiffResult:
        """A new address or CA means a new SuperLink: check again (replace)."""
        changed = [k for k in ("address", "ca_cert") if olds.get(k) != news.get(k)]
        return DiffResult(changes=bool(changed), replaces=changed, stables=[],
                          delete_before_replace=True)


# --- training dispatch --------------------------------------------------------------------------

# The properties whose change means "train again" (anything else, e.g. tags, does not).
DISPATCH_INPUTS = ("stack", "run_key", "superlink_address", "ca_cert")


class TrainingDispatchProvider(ResourceProvider):
    """Create = dispatch and train; delete = pull the VM's model store home.

    Args:
        run: ``props -> {"participants": ..., "training": ...}`` (the federation path).
        pull: ``props -> None``: brings the VM's model store home.
    """

    def __init__(self, run: RunFn, pull: PullFn) -> None:
        super().__init__()
        self.run = run
        self.pull = pull

    def create(self, props: dict[str, Any]) -> CreateResult:
        """Dispatch and train; a user error fails the deployment with its one-line fix."""
        try:
            outs = self.run(props)
        except FedcloudError as exc:
            raise Exception(str(exc)) from None  # the engine shows the message, not the type
        run_id = str((outs.get("training") or {}).get("runId") or "")
        digest = hashlib.sha256(f"{props['stack']}:{run_id}".encode()).hexdigest()[:16]
        return CreateResult(id_=f"run-{digest}", outs={**_public(props), **outs})

    def diff(self, _id: str, olds: dict[str, Any], news: dict[str, Any]) -> DiffResult:
        """Different participants, training settings or SuperLink mean a new run (replace)."""
        changed = [k for k in DISPATCH_INPUTS if olds.get(k) != news.get(k)]
        return DiffResult(changes=bool(changed), replaces=changed, stables=[],
                          delete_before_replace=True)

    def delete(self, _id: str, props: dict[str, Any]) -> None:
        """Pull the VM's store home; a failure stops ``pulumi destroy`` while the VM still exists.

        Runs before the VM is deleted (the dispatch depends on it). To destroy without the
        pull (the store is lost), remove this resource from the state first:
        ``pulumi state delete <urn of 'training'>``.
        """
        try:
            self.pull(props)
        except FedcloudError as exc:
            raise Exception(
                f"{exc} The aggregator VM was kept so that its model store is not lost; fix "
                "the cause and run 'pulumi destroy' again (or 'pulumi state delete' the "
                "'training' resource to give the store up).") from None


def _public(props: Mapping[str, Any]) -> dict[str, Any]:
    """The inputs without the private keys (they stay in the certificate resource only)."""
    return {k: v for k, v in props.items() if k not in CERT_SECRET_OUTPUTS}


# --- resources ----------------------------------------------------------------------------------

class DeploymentCerts(pulumi.dynamic.Resource, module="fedcloud", name="DeploymentCerts"):
    """The stack's CA, server certificate (SAN: public address + 127.0.0.1) and node keys."""

    ca_cert: pulumi.Output[str]
    ca_key: pulumi.Output[str]
    server_cert: pulumi.Output[str]
    server_key: pulumi.Output[str]
    node_keys: pulumi.Output[dict[str, Any]]
    ssh_host_key: pulumi.Output[str]
    ssh_host_public: pulumi.Output[str]
    ssh_host_fingerprint: pulumi.Output[str]

    def __init__(self, name: str, sans: pulumi.Input[list[str]], participants: list[str],
                 issue: IssueFn, opts: pulumi.ResourceOptions | None = None) -> None:
        secret = pulumi.ResourceOptions(additional_secret_outputs=CERT_SECRET_OUTPUTS)
        super().__init__(
            DeploymentCertsProvider(issue), name,
            {"sans": sans, "participants": participants, "ca_cert": None, "ca_key": None,
             "server_cert": None, "server_key": None, "node_keys": None, "ssh_host_key": None,
             "ssh_host_public": None, "ssh_host_fingerprint": None},
            pulumi.ResourceOptions.merge(opts, secret),
        )


class SuperLinkHealth(pulumi.dynamic.Resource, module="fedcloud", name="SuperLinkHealth"):
    """Becomes ready when the SuperLink answers ``/health`` over TLS."""

    address: pulumi.Output[str]
    healthy: pulumi.Output[bool]

    def __init__(self, name: str, address: pulumi.Input[str], ca_cert: pulumi.Input[str],
                 probe: ProbeFn, timeout_s: float = HEALTH_TIMEOUT_S,
                 opts: pulumi.ResourceOptions | None = None) -> None:
        super().__init__(
            SuperLinkHealthProvider(probe), name,
            {"address": address, "ca_cert": ca_cert, "timeout_s": timeout_s, "healthy": None,
             "probes": None},
            opts,
        )


class TrainingDispatch(pulumi.dynamic.Resource, module="fedcloud", name="TrainingDispatch"):
    """Runs the orchestrator (SuperNodes on the participants' VMs) and the training run."""

    participants: pulumi.Output[dict[str, Any]]
    training: pulumi.Output[dict[str, Any]]

    def __init__(self, name: str, props: Mapping[str, pulumi.Input[Any]], run: RunFn,
                 pull: PullFn, opts: pulumi.ResourceOptions | None = None) -> None:
        # "config" too: it may hold a secret (registry URI), and delete() reads it from outputs.
        secret = pulumi.ResourceOptions(additional_secret_outputs=[*CERT_SECRET_OUTPUTS,
                                                                   "config"])
        super().__init__(
            TrainingDispatchProvider(run, pull), name,
            {**props, "participants": None, "training": None},
            pulumi.ResourceOptions.merge(opts, secret),
        )

