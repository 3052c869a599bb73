"""Thin ``pulumi.dynamic`` providers: the stack's certificates, SuperLink health, training dispatch.

Each provider only adapts Pulumi's create/diff/update/delete calls to plain functions in ``fl/``
(the local stack calls the same functions). Rules that keep them correct under the real engine:

* The provider object is pickled (by reference, with ``dill``) when the resource is declared, and
  unpickled by the engine's Python host. So it holds no state at all: no sockets, SSH clients,
  threads or captured secrets. Everything arrives in ``props`` and is opened inside the method.
* Secrets reach ``create`` as plaintext; the resources list their secret outputs in
  ``additional_secret_outputs`` (see :data:`CERT_SECRET_OUTPUTS`), and the program also wraps them
  with ``pulumi.Output.secret``.
* Heavy imports (``fl.orchestrator.orchestrator``, ``fl.initializer.training``, ``fl.registry.store``) happen inside the
  methods: this module imports cleanly and fast, with nothing done at import time.
"""

from __future__ import annotations

import base64
import hashlib
import json
import tempfile
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import pulumi
from pulumi.dynamic import CreateResult, DiffResult, ResourceProvider, UpdateResult

from fedcloud.core.errors import FedcloudError, TrainingError
from fl.initializer.certs import ensure_deployment_certs, write_atomic

HEALTH_TIMEOUT_S = 900.0  # first boot: apt, venv, torch CPU wheel, flwr, mlflow
HEALTH_POLL_S = 10.0
CERT_SECRET_OUTPUTS = ["ca_key", "server_key", "node_keys", "ssh_host_key"]


# --- certificates -------------------------------------------------------------------------------

def _read(path: Path) -> str:
    return path.read_text(encoding="ascii")


def _restore(cert_dir: Path, olds: Mapping[str, Any]) -> None:
    """Write a previous state's CA, server certificate and node keys back to ``cert_dir``."""
    cert_dir.mkdir(parents=True, exist_ok=True)
    for name, text, mode in (("ca.pem", olds["ca_cert"], 0o644), ("ca.key", olds["ca_key"], 0o600),
                             ("server.pem", olds["server_cert"], 0o644),
                             ("server.key", olds["server_key"], 0o600)):
        write_atomic(cert_dir / name, text.encode("ascii"), mode)
    for name, pair in (olds.get("node_keys") or {}).items():
        write_atomic(cert_dir / "nodes" / f"{name}.key", pair["privateKey"].encode("ascii"), 0o600)
        write_atomic(cert_dir / "nodes" / f"{name}.pub", pair["publicKey"].encode("ascii"), 0o644)


def ssh_host_key() -> tuple[str, str, str]:
    """Return a new ed25519 SSH host key: (private OpenSSH PEM, public line, SHA256 fingerprint).

    The aggregator VM gets it through cloud-init, so the operator's side knows the fingerprint
    before the VM exists and pins it (no trust on first use).
    """
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ed25519

    key = ed25519.Ed25519PrivateKey.generate()
    private = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.OpenSSH,
                                serialization.NoEncryption()).decode("ascii")
    public = key.public_key().public_bytes(serialization.Encoding.OpenSSH,
                                           serialization.PublicFormat.OpenSSH).decode("ascii")
    return private, public, host_key_fingerprint(public)


def host_key_fingerprint(public_line: str) -> str:
    """OpenSSH's ``SHA256:...`` fingerprint of a public key line (``ssh-ed25519 AAAA...``)."""
    blob = base64.b64decode(public_line.split()[1])
    digest = base64.b64encode(hashlib.sha256(blob).digest()).decode("ascii").rstrip("=")
    return f"SHA256:{digest}"


def issue_certs(props: Mapping[str, Any], olds: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """Issue (or, given a previous state, reuse and extend) the stack's TLS material.

    Calls :func:`fl.initializer.certs.ensure_deployment_certs` in a private temporary directory: the CA and
    node keys of ``olds`` are kept (same key = same node id), the server certificate is reissued
    when its SANs no longer cover ``props["sans"]``.

    Args:
        props: ``sans`` (the aggregator's public address; 127.0.0.1 is always added) and
            ``participants`` (names; one SuperNode key each).
        olds: The previous outputs, on update.

    Returns:
        The inputs plus ``ca_cert``, ``ca_key``, ``server_cert``, ``server_key``, ``node_keys``
        (``{name: {publicKey, privateKey}}``) and the VM's SSH host key (``ssh_host_key``,
        ``ssh_host_public``, ``ssh_host_fingerprint``), all PEM/OpenSSH text.
    """
    if olds and olds.get("ssh_host_key"):
        host = (olds["ssh_host_key"], olds["ssh_host_public"], olds["ssh_host_fingerprint"])
    else:
        host = ssh_host_key()
    with tempfile.TemporaryDirectory(prefix="fedcloud-certs-") as tmp:
        cert_dir = Path(tmp) / "certs"
        if olds:
            _restore(cert_dir, olds)
        certs = ensure_deployment_certs(cert_dir, list(props["sans"]),
                                        list(props["participants"]))
        return {
            "sans": list(props["sans"]),
            "participants": list(props["participants"]),
            "ca_cert": _read(certs.ca.cert),
            "ca_key": _read(certs.ca.key),
            "server_cert": _read(certs.server.cert),
            "server_key": _read(certs.server.key),
            "node_keys": {name: {"publicKey": _read(k.public_key),
                                "privateKey": _read(k.private_key)}
                         for name, k in certs.nodes.items()},
            "ssh_host_key": host[0],
            "ssh_host_public": host[1],
            "ssh_host_fingerprint": host[2],
        }


class DeploymentCertsProvider(ResourceProvider):
    """The stack's CA, SuperLink server certificate and SuperNode keys, kept in Pulumi state.

    A changed address or participant list is an update (the CA and existing node keys are kept,
    so participants need nothing new); only ``pulumi destroy`` forgets the CA.
    """

    def create(self, props: dict[str, Any]) -> CreateResult:
        """Issue everything."""
        outs = issue_certs(props)
        digest = hashlib.sha256(outs["ca_cert"].encode("ascii")).hexdigest()[:16]
        return CreateResult(id_=f"ca-{digest}", outs=outs)

    def diff(self, _id: str, olds: dict[str, Any], news: dict[str, Any]) -> DiffResult:
        """Report changed SANs or participants (an in-place update)."""
        changed = [k for k in ("sans", "participants") if list(olds.get(k) or []) != list(news[k])]
        return DiffResult(changes=bool(changed), replaces=[], stables=["ca_cert", "ca_key"],
                          delete_before_replace=False)

    def update(self, _id: str, olds: dict[str, Any], news: dict[str, Any]) -> UpdateResult:
        """Reissue the server certificate / add node keys, keeping the CA."""
        return UpdateResult(outs=issue_certs(news, olds))


def materialize_certs(cert_dir: Path, outs: Mapping[str, Any]) -> None:
    """Write the certificate resource's outputs to ``cert_dir`` in ``fl.initializer.certs``'s layout.

    The operator-side code (``flwr`` CLI, the orchestrator) then finds them where the local stack
    keeps its own (``<stateDir>/certs``), and :func:`fl.initializer.certs.ensure_deployment_certs` reuses them.
    """
    _restore(cert_dir, outs)


# --- SuperLink health ---------------------------------------------------------------------------

def wait_healthy(address: str, ca_cert_pem: str, timeout_s: float = HEALTH_TIMEOUT_S,
                 poll_s: float = HEALTH_POLL_S,
                 probe: Callable[[str, str], bool] | None = None,
                 sleep: Callable[[float], None] = time.sleep,
                 clock: Callable[[], float] = time.monotonic) -> int:
    """Poll ``GET https://ADDRESS/health`` (verified against the stack's CA) until it answers.

    Args:
        address: ``host:port`` of the SuperLink.
        ca_cert_pem: The stack's CA certificate (PEM text).
        timeout_s: Give up after this long.
        poll_s: Pause between probes.
        probe: ``(address, ca_path) -> bool``; default :func:`fl.initializer.superlink.health_ok`.
        sleep: Injected for tests.
        clock: Injected for tests.

    Returns:
        The number of probes made.

    Raises:
        TrainingError: Not healthy within ``timeout_s`` (with what to check).
    """
    if probe is None:
        from fl.initializer.superlink import health_ok

        def probe(addr: str, ca: str) -> bool:
            return health_ok(addr, ca)

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

    def create(self, props: dict[str, Any]) -> CreateResult:
        """Wait for health; fail the deployment with the fix when it never comes."""
        probes = wait_healthy(props["address"], props["ca_cert"],
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
DISPATCH_INPUTS = ("stack", "config", "superlink_address", "ca_cert")


def run_dispatch(props: Mapping[str, Any]) -> dict[str, Any]:
    """Dispatch the participants' SuperNodes, then run and follow the training to its end.

    The same function as the local stack, :func:`fedcloud.federation.run_federation`: register the node
    keys, dispatch a SuperNode per participant round-robin with retries, run the training while
    the orchestrator's watcher re-dispatches nodes that die, then stop the SuperNodes. The
    ServerApp on the VM records rounds into the VM's own store
    (``infra.cloudinit.AGGREGATOR_REGISTRY_DIR``); ``delete`` pulls it home.

    Args:
        props: ``stack``; ``config`` (JSON of the config values the program read);
            ``superlink_address``; the certificate outputs ``ca_cert``, ``ca_key``,
            ``server_cert``, ``server_key``, ``node_keys``.

    Returns:
        ``{"participants": {...}, "training": {...}}`` (camelCase keys, JSON-able).

    Raises:
        FedcloudError: Nobody could be dispatched (``OrchestratorError``), or the run could not
            be submitted or did not complete (``TrainingError``, with Flower's detail), so that
            the next ``pulumi up`` tries again.
    """
    from fedcloud.core.config import from_mapping
    from fedcloud.core.participants import parse_participants
    from fedcloud.core.training import load_training
    from fedcloud.federation import participants_output, run_federation, training_output
    from fl.orchestrator.orchestrator import load_settings
    from fl.orchestrator.ssh import ParamikoTransport
    from fl.registry.store import stack_store
    from infra.cloudinit import AGGREGATOR_REGISTRY_DIR

    raw = from_mapping(str(props["stack"]), "pulumi config", json.loads(props["config"]))
    cert_dir = raw.state_dir / "certs"
    materialize_certs(cert_dir, props)
    participants = parse_participants(raw)
    _, experiment = stack_store(raw)
    fed = run_federation(
        raw, participants, superlink=str(props["superlink_address"]),
        ca_cert=cert_dir / "ca.pem",
        node_keys={p.name: (cert_dir / "nodes" / f"{p.name}.key",
                            cert_dir / "nodes" / f"{p.name}.pub") for p in participants},
        run_config=load_training(raw).run_config(tracking_uri=AGGREGATOR_REGISTRY_DIR,
                                                 experiment=experiment, stack=raw.stack),
        transport=ParamikoTransport(load_settings(raw).host_key_policy))
    trained = fed.training
    if trained is None:
        fed.dispatch.raise_on_failure()
        raise TrainingError("no participant could be dispatched.",
                            "see the participants' dispatch results; 'pulumi up' runs it again.")
    if trained.status != "COMPLETED":
        raise TrainingError(
            f"training run {trained.run_id} ended {trained.status}: {trained.detail}.",
            "see the participants' dispatch results above and the SuperLink's journal "
            "(journalctl -u fedcloud-superlink on the VM); 'pulumi up' runs it again.")
    return {"participants": participants_output(fed.dispatch),
            "training": training_output(trained)}


def pull_registry(props: Mapping[str, Any]) -> None:
    """Bring the VM's model store home over SFTP (pinned host key) before the VM goes.

    Args:
        props: The dispatch resource's inputs: ``stack``, ``config``, ``public_ip``,
            ``ssh_user``, ``ssh_private_key_path``, ``ssh_host_fingerprint`` (and ``ssh_port``,
            default 22).

    Raises:
        FedcloudError: Connection, transfer or import failed (``RegistryError``/``SshError``).
    """
    from fedcloud.core.config import from_mapping
    from fedcloud.core.participants import VmSpec
    from fl.orchestrator.ssh import ParamikoTransport
    from fl.registry.store import stack_store
    from fl.registry.sync import AGGREGATOR_STORE_DIR, pull_store

    raw = from_mapping(str(props["stack"]), "pulumi config", json.loads(props["config"]))
    vm = VmSpec(id="aggregator", host=str(props["public_ip"]),
                port=int(props.get("ssh_port") or 22),
                user=str(props["ssh_user"]), key_path=Path(props["ssh_private_key_path"]),
                host_key_fingerprint=str(props["ssh_host_fingerprint"]), state="Active",
                vcpus=None, memory_gb=None, disk_gb=None)
    location, experiment = stack_store(raw)
    with ParamikoTransport("reject").connect(vm) as session:
        sftp = session._client.open_sftp()  # the session's own SSH connection
        try:
            pull_store(sftp, AGGREGATOR_STORE_DIR, location, experiment, raw.state_dir)
        finally:
            sftp.close()


class TrainingDispatchProvider(ResourceProvider):
    """Create = orchestrator + FL Initializer; delete = pull the VM's model store home."""

    def create(self, props: dict[str, Any]) -> CreateResult:
        """Dispatch and train; a user error fails the deployment with its one-line fix."""
        try:
            outs = run_dispatch(props)
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
            pull_registry(props)
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
                 opts: pulumi.ResourceOptions | None = None) -> None:
        secret = pulumi.ResourceOptions(additional_secret_outputs=CERT_SECRET_OUTPUTS)
        super().__init__(
            DeploymentCertsProvider(), name,
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
                 timeout_s: float = HEALTH_TIMEOUT_S,
                 opts: pulumi.ResourceOptions | None = None) -> None:
        super().__init__(
            SuperLinkHealthProvider(), name,
            {"address": address, "ca_cert": ca_cert, "timeout_s": timeout_s, "healthy": None,
             "probes": None},
            opts,
        )


class TrainingDispatch(pulumi.dynamic.Resource, module="fedcloud", name="TrainingDispatch"):
    """Runs the orchestrator (SuperNodes on the participants' VMs) and the training run."""

    participants: pulumi.Output[dict[str, Any]]
    training: pulumi.Output[dict[str, Any]]

    def __init__(self, name: str, props: Mapping[str, pulumi.Input[Any]],
                 opts: pulumi.ResourceOptions | None = None) -> None:
        # "config" too: it may hold a secret (registry URI), and delete() reads it from outputs.
        secret = pulumi.ResourceOptions(additional_secret_outputs=[*CERT_SECRET_OUTPUTS,
                                                                   "config"])
        super().__init__(
            TrainingDispatchProvider(), name,
            {**props, "participants": None, "training": None},
            pulumi.ResourceOptions.merge(opts, secret),
        )

