"""End to end: `fedcloud up --stack local` twice (1 round each), then `fedcloud down`.

Real processes throughout: one sshd per Active emulated VM on 127.0.1.x, a TLS + node-auth
SuperLink, SuperNodes started over SSH by the orchestrator, Flower training, an MLflow store.
The stack is the repository's `stacks/Pulumi.local.yaml` with one round and a private state
directory.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from fedcloud.core.config import ROOT, load_stack

pytestmark = pytest.mark.slow

USABLE = {"vm-001", "vm-002"}


def _stack_file(tmp: Path) -> Path:
    doc = yaml.safe_load((ROOT / "stacks" / "Pulumi.local.yaml").read_text())
    cfg = doc["config"]
    cfg["fedcloud:stateDir"] = str(tmp / "state")
    cfg["fedcloud:training"] = {**cfg["fedcloud:training"], "rounds": 1}
    cfg["fedcloud:localData"] = {"trainPerParticipant": 60, "testPerParticipant": 24}
    path = tmp / "Pulumi.e2e.yaml"
    path.write_text(yaml.safe_dump(doc))
    return path


def _fedcloud(*args: str, timeout: float = 900) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "fedcloud.cli.main", *args], capture_output=True,
                          text=True, timeout=timeout, cwd=ROOT, check=False)


def _up(stack: Path) -> dict[str, Any]:
    proc = _fedcloud("up", "--config", str(stack), "--json")
    assert proc.returncode == 0, proc.stderr[-4000:]
    outputs: dict[str, Any] = json.loads(proc.stdout)
    return outputs


def _processes_mentioning(text: str) -> list[int]:
    """PIDs whose command line or environment mentions ``text`` (the stack's state dir)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            blob = (entry / "cmdline").read_bytes() + (entry / "environ").read_bytes()
        except OSError:
            continue
        if text.encode() in blob:
            found.append(int(entry.name))
    return found


def _listening(host: str, port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(1.0)
        return s.connect_ex((host, port)) == 0


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> Any:
    tmp = tmp_path_factory.mktemp("local-e2e")
    stack = _stack_file(tmp)
    try:
        first = _up(stack)
        second = _up(stack)
        yield stack, first, second
    finally:
        _fedcloud("down", "--config", str(stack))


def test_outputs_have_the_pulumi_programs_keys(run: Any) -> None:
    _, first, _ = run
    assert {"aggregator", "plan", "participants", "training"} <= set(first)
    assert first["aggregator"]["cloud"] == "local"
    assert first["aggregator"]["caCert"].startswith("-----BEGIN CERTIFICATE-----")
    assert first["plan"]["choice"]["cloud"] in {"aws", "gcp", "azure"}
    assert first["plan"]["weights"] == [9, 1]


def test_only_usable_vms_are_used_in_round_robin_order(run: Any) -> None:
    _, first, second = run
    for name, part in first["participants"].items():
        assert part["status"] == "dispatched", part
        assert part["vm"] in USABLE
        # inactive and below-spec VMs are filtered out, never tried
        assert set(part["ineligible"]) == {"vm-003", "vm-004", "vm-005"}
        assert "Inactive" in part["ineligible"]["vm-003"]
        assert "below the minimum" in part["ineligible"]["vm-005"]
        assert {t["vm"] for t in part["tried"]} <= USABLE
        # the circular queue persists: the next task goes to the other usable VM
        assert second["participants"][name]["vm"] == (USABLE - {part["vm"]}).pop()


def test_every_participant_trained_and_metrics_were_recorded(run: Any) -> None:
    _, first, second = run
    for outputs in (first, second):
        training = outputs["training"]
        assert training["status"] == "COMPLETED", training
        assert training["rounds"] == 1
        best = training["bestModel"]
        assert set(best["metrics"]) >= {"loss", "accuracy", "precision", "recall", "f1"}


def test_best_model_downloads_and_loads(run: Any) -> None:
    import torch

    from fl.registry.store import load_model

    _, _, second = run
    best = second["training"]["bestModel"]
    model = load_model(best["file"])
    card = json.loads(Path(best["card"]).read_text())
    assert card["round"] == best["round"]
    size = card.get("params", {}).get("image_size", 64)
    out = model(torch.zeros(2, 1, int(size), int(size)))
    assert tuple(out.shape) == (2, 3)


def test_down_leaves_no_process_or_port_behind(run: Any) -> None:
    stack, _, second = run
    raw = load_stack(path=stack)
    proc = _fedcloud("down", "--config", str(stack))
    assert proc.returncode == 0, proc.stderr
    assert _processes_mentioning(str(raw.state_dir)) == []
    host, port = second["aggregator"]["superlinkAddress"].rsplit(":", 1)
    assert not _listening(host, int(port))
    state = json.loads((raw.state_dir / "vms" / "hospital-us" / "emulated.json").read_text())
    for vm in state["vms"]:
        spec = vm["spec"]
        assert not _listening(spec["host"], int(spec["port"])), vm["id"]
    # down twice is harmless
    again = _fedcloud("down", "--config", str(stack))
    assert again.returncode == 0 and "nothing" in again.stdout
