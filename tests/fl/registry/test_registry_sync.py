"""The aggregator's store pulled home over SFTP and imported into the operator's store.

The SFTP session is a double over a local directory (the same ``listdir_attr``/``get`` calls as
``paramiko.SFTPClient``); both stores are real MLflow stores.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest
import torch
from registry_fixtures import fresh_store_dir

from fedcloud.core.config import from_mapping
from fedcloud.core.errors import RegistryError
from fedcloud.core.stack import parse
from fl.app.records import RoundRecord
from fl.registry.store import open_store
from fl.registry.sync import SOURCE_RUN_TAG, pull_store

EXPERIMENT = "fedcloud-cloud"


class Entry:
    """What paramiko's listdir_attr returns, reduced to the fields used."""

    def __init__(self, entry: os.DirEntry[str]) -> None:
        self.filename = entry.name
        self.st_mode = entry.stat().st_mode


class Sftp:
    """SFTP double: remote paths are paths under ``root``; ``fail_on`` makes one get() fail."""

    def __init__(self, root: Path, fail_on: str | None = None) -> None:
        self.root = root
        self.fail_on = fail_on

    def listdir_attr(self, path: str = ".") -> Sequence[Any]:
        return [Entry(e) for e in os.scandir(self.root / path)]

    def get(self, remotepath: str, localpath: str) -> None:
        if self.fail_on and remotepath.endswith(self.fail_on):
            raise OSError("Connection reset by peer")
        shutil.copyfile(self.root / remotepath, localpath)


def record(n: int) -> RoundRecord:
    metrics = {"loss": 1.0 / (n + 1), "accuracy": 0.5 + 0.1 * n, "precision": 0.5,
               "recall": 0.5, "f1": 0.4 + 0.1 * n}
    return RoundRecord(n, metrics, per_client=({"participant": "bank-eu", "num_examples": 5,
                                                "accuracy": 0.5},))


def train(vm_home: Path, rounds: int, name: str) -> dict[int, dict[str, torch.Tensor]]:
    """What the ServerApp does on the VM: an embedded store under ~/fedcloud-state/registry."""
    location = vm_home / "fedcloud-state" / "registry"
    if not location.exists():
        fresh_store_dir(location)
    store = open_store(str(location), EXPERIMENT)
    store.start_run(name, {"model": "cifar_cnn", "rounds": rounds}, {"stack": "cloud"})
    states = {}
    for n in range(rounds):
        torch.manual_seed(n)
        states[n] = torch.nn.Linear(3, 2).state_dict()
        store.log_round(record(n), states[n])
    store.end_run("FINISHED")
    return states


def test_pull_imports_everything_and_survives_the_vm(tmp_path: Path) -> None:
    vm_home, state = tmp_path / "vm", tmp_path / "operator"
    states = train(vm_home, 3, "first")
    local = fresh_store_dir(state / "registry")
    cfg = parse(from_mapping("cloud", "test", {  # the stack's store: experiment fedcloud-cloud
        "stateDir": str(state), "limits": {"maxCost": 100, "maxLatencyMs": 300},
        "participants": [{"name": "p", "location": {"region": "aws:us-east-1"}}]}))
    report = pull_store(Sftp(vm_home), "fedcloud-state/registry", cfg.registry.location,
                        cfg.registry.experiment, cfg.state_dir)
    assert (report.rounds_imported, report.rounds_present) == (3, 0)
    assert (report.snapshot / "mlflow.db").is_file()
    assert report.snapshot.parent == state / "registry-pulls"
    assert open_store(local, EXPERIMENT).runs()[0].params["model"] == "cifar_cnn"

    again = pull_store(Sftp(vm_home), "fedcloud-state/registry", local, EXPERIMENT, state)
    assert (again.rounds_imported, again.rounds_present, again.runs) == (0, 3, report.runs)

    train(vm_home, 2, "second")  # a second training run on the same VM, pulled incrementally
    third = pull_store(Sftp(vm_home), "fedcloud-state/registry", local, EXPERIMENT, state)
    assert (third.rounds_imported, third.rounds_present) == (2, 3)

    shutil.rmtree(vm_home)  # pulumi destroy: the VM and its disk are gone
    shutil.rmtree(state / "registry-pulls")  # and even the raw snapshots
    store = open_store(local, EXPERIMENT)
    runs = store.runs()
    assert [(r.run_name, len(r.rounds), r.status) for r in runs] == [
        ("second", 2, "FINISHED"), ("first", 3, "FINISHED")]
    assert runs[1].tags[SOURCE_RUN_TAG] and runs[1].params["model"] == "cifar_cnn"
    path, _ = store.download(tmp_path / "m.pt", server_round=2, run_id=runs[1].run_id)
    loaded = torch.load(path, weights_only=True)
    assert all(torch.equal(loaded[k], v) for k, v in states[2].items())


@pytest.mark.parametrize(("remote", "fail_on", "match"), [
    ("fedcloud-state/nothing", None, r"cannot list fedcloud-state/nothing on the aggregator"),
    ("fedcloud-state/registry", "model.pt", r"copying .*model\.pt from the aggregator failed"),
    ("fedcloud-state", None, r"fedcloud-state on the aggregator holds no model store"),
])
def test_pull_failures_leave_nothing_half_written(tmp_path: Path, remote: str,
                                                  fail_on: str | None, match: str) -> None:
    vm_home, state = tmp_path / "vm", tmp_path / "operator"
    (vm_home / "fedcloud-state" / "other").mkdir(parents=True)
    (vm_home / "fedcloud-state" / "other" / "x").write_text("x")
    if fail_on:
        train(vm_home, 1, "r")
    with pytest.raises(RegistryError, match=match):
        pull_store(Sftp(vm_home, fail_on), remote, str(state / "registry"), EXPERIMENT, state)
    assert list((state / "registry-pulls").iterdir()) == []
    assert not (state / "registry").exists()


def test_pull_refuses_a_corrupt_checkpoint(tmp_path: Path) -> None:
    vm_home, state = tmp_path / "vm", tmp_path / "operator"
    train(vm_home, 2, "r")
    artifacts = vm_home / "fedcloud-state" / "registry" / "artifacts"
    for ckpt in artifacts.rglob("round-0001/model.pt"):
        ckpt.write_bytes(b"garbage")
    local = fresh_store_dir(state / "registry")
    with pytest.raises(RegistryError, match=r"round-0001/model\.pt is corrupt"):
        pull_store(Sftp(vm_home), "fedcloud-state/registry", local, EXPERIMENT, state)
    assert [len(r.rounds) for r in open_store(local, EXPERIMENT).runs()] == [1]


@pytest.mark.slow
def test_pull_over_real_sftp(tmp_path: Path) -> None:
    """The same pull through paramiko's SFTPClient to OpenSSH's sshd on loopback."""
    import base64

    import paramiko

    from fedcloud.local.emulated import EmulatedCloud, VmRequest

    with EmulatedCloud(tmp_path / "vms", first_host=71) as cloud:
        (spec,) = cloud.start([VmRequest("aggregator-001", "Active", 2, 4, 20)])
        vm_home = cloud.vm("aggregator-001").root  # the emulated VM's disk
        states = train(vm_home, 2, "over-ssh")
        key_type, key_b64 = (vm_home / "ssh_host_ed25519_key.pub").read_text().split()[:2]
        client = paramiko.SSHClient()
        client.set_missing_host_key_policy(paramiko.RejectPolicy())
        client.get_host_keys().add(f"[{spec.host}]:{spec.port}", key_type,
                                   paramiko.PKey.from_type_string(key_type,
                                                                  base64.b64decode(key_b64)))
        client.connect(spec.host, spec.port, username=spec.user, key_filename=str(spec.key_path),
                       allow_agent=False, look_for_keys=False, timeout=10)
        try:
            local = fresh_store_dir(tmp_path / "operator" / "registry")
            report = pull_store(client.open_sftp(), str(vm_home / "fedcloud-state" / "registry"),
                                local, EXPERIMENT, tmp_path / "operator")
        finally:
            client.close()
    assert (report.rounds_imported, report.rounds_present) == (2, 0)
    path, _ = open_store(local, EXPERIMENT).download(tmp_path / "m.pt", server_round=1)
    loaded = torch.load(path, weights_only=True)
    assert all(torch.equal(loaded[k], v) for k, v in states[1].items())
