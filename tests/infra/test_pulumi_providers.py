"""The dynamic providers (infra/providers.py), tested directly: mocks never run create/diff."""

from __future__ import annotations

import base64
import contextlib
import http.server
import json
import pickle
import ssl
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import dill
import pytest
from cryptography import x509
from pulumi.dynamic.dynamic import serialize_provider

from fedcloud.core.errors import TrainingError
from fedcloud.federation import pull_registry, run_dispatch
from fl.initializer.certs import server_cert_sans
from fl.initializer.material import issue_certs, materialize_certs
from fl.initializer.superlink import health_ok
from infra.providers import (
    DeploymentCertsProvider,
    SuperLinkHealthProvider,
    TrainingDispatchProvider,
    wait_healthy,
)

LIMITS = {"maxCost": 100, "maxLatencyMs": 300}


def certs_provider() -> DeploymentCertsProvider:
    return DeploymentCertsProvider(issue_certs)


def health_provider() -> SuperLinkHealthProvider:
    return SuperLinkHealthProvider(health_ok)


def dispatch_provider() -> TrainingDispatchProvider:
    return TrainingDispatchProvider(run_dispatch, pull_registry)


PROVIDERS = {certs_provider: ["fl.initializer.material", "issue_certs"],
             health_provider: ["fl.initializer.superlink", "health_ok"],
             dispatch_provider: ["fedcloud.federation", "run_dispatch", "pull_registry"]}


def sans_of(pem: str) -> set[str]:
    cert = x509.load_pem_x509_certificate(pem.encode())
    ext = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    return {str(ip) for ip in ext.get_values_for_type(x509.IPAddress)}


@pytest.fixture(scope="module")
def certs() -> dict[str, Any]:
    created = certs_provider().create({"sans": ["203.0.113.7"],
                                                "participants": ["hospital-us", "hospital-kr"]})
    assert created.outs is not None
    return dict(created.outs)


def test_certs_san_is_the_public_address_and_loopback(certs: dict[str, Any]) -> None:
    assert sans_of(certs["server_cert"]) == {"203.0.113.7", "127.0.0.1"}
    assert certs["ca_key"].startswith("-----BEGIN PRIVATE KEY-----")
    assert set(certs["node_keys"]) == {"hospital-us", "hospital-kr"}
    assert certs["node_keys"]["hospital-us"]["publicKey"].startswith("ecdsa-sha2-nistp384 ")
    assert "OPENSSH PRIVATE KEY" in certs["node_keys"]["hospital-us"]["privateKey"]


def test_certs_update_keeps_ca_and_node_keys(certs: dict[str, Any]) -> None:
    provider = certs_provider()
    news = {"sans": ["198.51.100.9"], "participants": ["hospital-us", "hospital-kr", "new"]}
    diff = provider.diff("id", certs, news)
    assert diff.changes is True
    assert diff.replaces == []  # an update: the CA (and so every node's trust) stays
    updated = provider.update("id", certs, news).outs
    assert updated is not None
    assert updated["ca_cert"] == certs["ca_cert"]
    assert updated["ca_key"] == certs["ca_key"]
    assert updated["node_keys"]["hospital-us"] == certs["node_keys"]["hospital-us"]
    assert set(updated["node_keys"]) == {"hospital-us", "hospital-kr", "new"}
    assert sans_of(updated["server_cert"]) == {"198.51.100.9", "127.0.0.1"}
    assert updated["server_cert"] != certs["server_cert"]


def test_certs_no_change_no_diff(certs: dict[str, Any]) -> None:
    diff = certs_provider().diff(
        "id", certs, {"sans": certs["sans"], "participants": certs["participants"]})
    assert diff.changes is False


def test_materialize_writes_fl_certs_layout(tmp_path: Path, certs: dict[str, Any]) -> None:
    materialize_certs(tmp_path, certs)
    assert (tmp_path / "ca.pem").read_text() == certs["ca_cert"]
    assert (tmp_path / "server.key").stat().st_mode & 0o777 == 0o600
    assert (tmp_path / "nodes" / "hospital-kr.key").stat().st_mode & 0o777 == 0o600
    assert set(server_cert_sans(tmp_path / "server.pem")) == {"203.0.113.7", "127.0.0.1"}


@pytest.mark.parametrize("make", list(PROVIDERS))
def test_provider_pickles_by_reference_as_the_sdk_does(make: Any) -> None:
    provider = make()
    blob = base64.b64decode(serialize_provider(provider))
    # by reference: the engine's Python host imports the modules, no code is captured
    assert b"infra.providers" in blob
    for name in PROVIDERS[make]:
        assert name.encode() in blob
    assert len(blob) < 1024
    restored = dill.loads(blob)
    assert type(restored) is type(provider)
    # nothing captured but the functions it was given: no sockets, clients, threads or secrets
    assert vars(restored) == vars(provider)
    assert all(callable(v) for v in vars(restored).values())
    assert vars(pickle.loads(pickle.dumps(provider))) == vars(provider)


# --- health -------------------------------------------------------------------------------------

class _Health(http.server.BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        self.send_response(200 if self.path == "/health" else 404)
        self.end_headers()

    def log_message(self, *args: Any) -> None:
        """Silence the per-request log."""


@pytest.fixture()
def tls_health(tmp_path: Path, certs: dict[str, Any]) -> Iterator[str]:
    """A real HTTPS /health endpoint on loopback with the stack's server certificate."""
    materialize_certs(tmp_path, certs)
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Health)
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(tmp_path / "server.pem", tmp_path / "server.key")
    server.socket = ctx.wrap_socket(server.socket, server_side=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


def test_health_over_tls_verifies_the_stack_ca(tls_health: str, certs: dict[str, Any]) -> None:
    created = health_provider().create(
        {"address": tls_health, "ca_cert": certs["ca_cert"], "timeout_s": 5})
    assert created.outs is not None and created.outs["healthy"] is True


def test_health_rejects_a_foreign_ca(tls_health: str) -> None:
    other = issue_certs({"sans": ["127.0.0.1"], "participants": []})
    with pytest.raises(TrainingError, match=r"did not answer /health over TLS.*operatorCidr"):
        wait_healthy(tls_health, other["ca_cert"], health_ok, timeout_s=0.3, poll_s=0.05)


def test_wait_healthy_polls_until_ready() -> None:
    answers = iter([False, False, True])
    now = [0.0]
    probes = wait_healthy("203.0.113.7:8000", "CA", lambda addr, ca: next(answers),
                          timeout_s=100, poll_s=10,
                          sleep=lambda s: now.__setitem__(0, now[0] + s), clock=lambda: now[0])
    assert probes == 3
    assert now[0] == 20


def test_health_diff_replaces_on_new_address() -> None:
    diff = health_provider().diff("id", {"address": "a:1", "ca_cert": "x"},
                                          {"address": "b:1", "ca_cert": "x"})
    assert diff.changes is True and diff.replaces == ["address"]


# --- dispatch -----------------------------------------------------------------------------------

class FakeOrchestrator:
    """Records what the provider wires into the orchestrator; places each node on vm-001."""

    instances: list[FakeOrchestrator] = []

    def __init__(self, participants: Any, launches: Any, **kwargs: Any) -> None:
        self.participants = list(participants)
        self.launches = dict(launches)
        self.kwargs = kwargs
        self.stopped: dict[str, Any] | None = None
        FakeOrchestrator.instances.append(self)

    def dispatch(self) -> Any:
        from fl.orchestrator import (
            DispatchResult,
            NodePlacement,
            ParticipantResult,
            VmAttempt,
        )

        out = DispatchResult()
        for p in self.participants:
            vm = p.vms[0]
            out[p.name] = ParticipantResult(
                p.name, NodePlacement(p.name, vm, "/tmp/x", 1, 9094, 0.0),
                attempts=(VmAttempt("vm-009", False, "connect", "refused", 0.1),
                          VmAttempt(vm.id, True, "online", "ok", 0.2)))
        return out

    @contextlib.contextmanager
    def watcher(self, placements: Any) -> Iterator[None]:
        yield

    def stop(self, placements: Any) -> dict[str, Any]:
        self.stopped = dict(placements)
        return {}


@pytest.fixture()
def wired(monkeypatch: pytest.MonkeyPatch, tmp_path: Path,
          certs: dict[str, Any]) -> dict[str, Any]:
    """Dispatch props for a two-participant stack, with the fl functions recorded."""
    import fedcloud.federation
    from fl.initializer.training import TrainingResult

    seen: dict[str, Any] = {"status": "COMPLETED"}
    FakeOrchestrator.instances.clear()

    def register_nodes(cli: Any, connection: str, address: str, keys: Any) -> dict[str, int]:
        seen["registered"] = {k: Path(v).read_text() for k, v in keys.items()}
        return {name: i + 1 for i, name in enumerate(keys)}

    def start_training(**kwargs: Any) -> TrainingResult:
        seen["training"] = kwargs
        rounds = [{"round": 1, "metrics": {"f1": 0.5}}, {"round": 2, "metrics": {"f1": 0.7}}]
        return TrainingResult(run_id=7, status=seen["status"], detail="3 rounds",
                              flower_status="finished:completed", rounds=rounds,
                              store_run_id="abc", node_ids={}, elapsed_s=12.0,
                              network_bytes=100)

    # fedcloud.federation is the composition the provider calls (the local stack calls it too)
    monkeypatch.setattr(fedcloud.federation, "register_nodes", register_nodes)
    monkeypatch.setattr(fedcloud.federation, "start_training", start_training)
    monkeypatch.setattr(fedcloud.federation, "Orchestrator", FakeOrchestrator)
    vm = {"id": "vm-001", "host": "vm-001.example", "state": "Active", "vcpus": 4,
          "memoryGb": 8, "diskGb": 40}
    config = {"stateDir": str(tmp_path / "state"), "training": {"rounds": 3},
              "limits": {"maxCost": 100, "maxLatencyMs": 300},
              "participants": [
                  {"name": n, "location": {"region": "aws:us-east-1"},
                   "egressCidr": "203.0.113.10/32", "dataDir": "/srv/data",
                   "vms": [{**vm, "host": f"vm-001.{n}.example"}]}
                  for n in ("hospital-us", "hospital-kr")]}
    seen["props"] = {"stack": "s", "config": json.dumps(config),
                     "superlink_address": "203.0.113.7:8000",
                     **{k: certs[k] for k in ("ca_cert", "ca_key", "server_cert", "server_key",
                                              "node_keys")}}
    seen["state"] = tmp_path / "state"
    return seen


def test_dispatch_wires_orchestrator_and_initializer(wired: dict[str, Any],
                                                     certs: dict[str, Any]) -> None:
    from infra.cloudinit import AGGREGATOR_REGISTRY_DIR

    created = dispatch_provider().create(wired["props"])
    certs_dir = wired["state"] / "certs"
    # the stack's node keys from Pulumi state are what gets registered and shipped
    assert wired["registered"]["hospital-kr"] == certs["node_keys"]["hospital-kr"]["publicKey"]
    (orch,) = FakeOrchestrator.instances
    launch = orch.launches["hospital-us"]
    assert launch.superlink == "203.0.113.7:8000"
    assert launch.ca_cert.read_text() == certs["ca_cert"]
    assert launch.node_key == certs_dir / "nodes" / "hospital-us.key"
    assert launch.data_dir == "/srv/data"
    assert orch.kwargs["nodes"].node_ids == {"hospital-us": 1, "hospital-kr": 2}
    assert orch.stopped is not None and set(orch.stopped) == {"hospital-us", "hospital-kr"}
    training = wired["training"]
    assert training["superlink"] == "203.0.113.7:8000"
    # ints survive: the config travels as JSON text, not as Pulumi's float-only numbers
    assert training["run_config"].rounds == 3
    assert training["run_config"].tracking_uri == AGGREGATOR_REGISTRY_DIR
    # The cloud path resumes like the local one: the ServerApp finds the unfinished run of the
    # same config on the VM's store, and a lost aggregator is waited for and resubmitted.
    assert training["run_config"].resume is True
    assert (training["max_resumes"], training["aggregator_wait_s"]) == (5, 180.0)
    outs = created.outs
    assert outs is not None
    assert outs["participants"]["hospital-us"]["vm"] == "vm-001"
    assert outs["participants"]["hospital-us"]["attempts"] == 2
    assert outs["training"]["runId"] == "7" and outs["training"]["status"] == "COMPLETED"
    assert outs["training"]["bestModel"]["round"] == 2
    assert (outs["training"]["flowerRuns"], outs["training"]["resumedFrom"]) == ([], [])
    assert "node_keys" not in outs and "server_key" not in outs


def test_dispatch_fails_the_deployment_when_training_does_not_complete(
        wired: dict[str, Any]) -> None:
    wired["status"] = "NODES_LOST"
    with pytest.raises(Exception, match=r"ended NODES_LOST.*To fix: .*pulumi up"):
        dispatch_provider().create(wired["props"])
    (orch,) = FakeOrchestrator.instances
    assert orch.stopped is not None  # the SuperNodes are stopped even then


def test_dispatch_diff_retrains_only_on_relevant_change() -> None:
    olds = {"stack": "s", "run_key": "{}", "superlink_address": "a:1", "ca_cert": "x"}
    same = dispatch_provider().diff("id", olds, dict(olds))
    assert same.changes is False
    moved = dispatch_provider().diff("id", olds, {**olds, "run_key": '{"training": {}}'})
    assert moved.changes is True and moved.replaces == ["run_key"]
    tags = dispatch_provider().diff("id", olds, {**olds, "config": '{"tags": {"a": "b"}}'})
    assert tags.changes is False


# --- destroy: the model store comes home first --------------------------------------------------

@pytest.mark.slow
def test_delete_pulls_the_store_over_sftp_with_the_pinned_host_key(
        monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """Against a real sshd on loopback (infra/emulated.py): pinned key accepted, wrong one not."""
    import fl.registry.sync
    from fedcloud.local.emulated import EmulatedCloud, VmRequest

    pulled: dict[str, Any] = {}

    def pull_store(sftp: Any, remote_dir: str, location: Any, experiment: str,
                   state_dir: Path) -> None:
        pulled.update(listing=sftp.listdir("."), remote_dir=remote_dir, experiment=experiment,
                      state_dir=state_dir)

    monkeypatch.setattr(fl.registry.sync, "pull_store", pull_store)
    with EmulatedCloud(root=tmp_path / "vms") as cloud:
        (spec,) = cloud.start([VmRequest("aggregator", "Active", 2, 4, 20)])
        assert spec.key_path is not None and spec.host_key_fingerprint is not None
        props = {"stack": "s", "config": json.dumps(
                     {"stateDir": str(tmp_path / "state"), "limits": LIMITS, "participants": [
                         {"name": "p", "location": {"region": "aws:us-east-1"}}]}),
                 "public_ip": spec.host, "ssh_port": spec.port, "ssh_user": spec.user,
                 "ssh_private_key_path": str(spec.key_path),
                 "ssh_host_fingerprint": spec.host_key_fingerprint}
        dispatch_provider().delete("id", props)
        assert pulled["remote_dir"] == "fedcloud-state/registry"
        assert pulled["experiment"] == "fedcloud-s"
        assert isinstance(pulled["listing"], list)
        other = "SHA256:" + "A" * 43
        with pytest.raises(Exception, match=r"aggregator VM was kept.*pulumi destroy"):
            dispatch_provider().delete("id", {**props, "ssh_host_fingerprint": other})
