"""Golden files of ``fedcloud preview``: every change to what a stack declares is a reviewed diff.

``tests/golden/<stack>.json`` holds the rendering of each stack in ``stacks/`` under the SDK's
mocks (``infra.preview.render``). Regenerate after an intended change and review the diff:

    FEDCLOUD_UPDATE_GOLDEN=1 .venv/bin/pytest tests/infra/test_pulumi_preview.py

(The optimizer's choices are part of each rendering, so a catalogue or optimizer change shows up
here too.) The rendering is not ``pulumi preview``: it cannot tell update from replace or see drift.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from pulumi_fixtures import CLOUD_STACKS, GOLDEN_DIR, operator_home, stack_run

from fedcloud.cli.main import main
from fedcloud.core.config import available_stacks
from infra.preview import NOTICE, render, render_stack, to_json

UPDATE = os.environ.get("FEDCLOUD_UPDATE_GOLDEN") == "1"
REGENERATE = "FEDCLOUD_UPDATE_GOLDEN=1 .venv/bin/pytest tests/infra/test_pulumi_preview.py"


def rendered(stack: str) -> str:
    if stack in CLOUD_STACKS:  # share the policy tests' runs
        return to_json(render(stack_run(stack)))
    with operator_home():
        return to_json(render_stack(stack))


@pytest.mark.parametrize("stack", available_stacks())
def test_rendering_matches_the_golden_file(stack: str) -> None:
    golden = GOLDEN_DIR / f"{stack}.json"
    text = rendered(stack)
    if UPDATE:
        golden.write_text(text, encoding="utf-8")
    assert golden.exists(), f"no golden file for stack '{stack}': run {REGENERATE}"
    assert golden.read_text(encoding="utf-8") == text, (
        f"stack '{stack}' renders differently from {golden}; if intended, run {REGENERATE} "
        "and review the diff")


def test_every_golden_file_has_a_stack() -> None:
    stale = {p.stem for p in GOLDEN_DIR.glob("*.json")} - set(available_stacks())
    assert not stale, f"golden files without a stack: {sorted(stale)}; delete them"


def test_cli_writes_the_same_json(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "covid19-azure.json"
    with operator_home():
        assert main(["preview", "--stack", "covid19-azure", "--out", str(out)]) == 0
    doc = json.loads(out.read_text())
    assert doc["notice"] == NOTICE and "not by 'pulumi preview'" in doc["notice"]
    assert out.read_text() == (GOLDEN_DIR / "covid19-azure.json").read_text()


def test_cli_reports_a_rejected_stack(capsys: pytest.CaptureFixture[str]) -> None:
    with operator_home():
        assert main(["preview", "--stack", "local"]) == 1
    captured = capsys.readouterr()
    assert json.loads(captured.out)["error"].startswith("pulumi config: fedcloud:aggregator")
    assert "To fix: run this stack with 'fedcloud up --stack local'" in captured.err


def test_preview_without_an_ssh_key_uses_a_placeholder_and_says_so(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HOME", str(tmp_path))  # no ~/.ssh/id_ed25519.pub here
    doc = render_stack("covid19-aws")
    assert "error" not in doc
    assert any("placeholder key" in w and "~/.ssh/id_ed25519.pub" in w for w in doc["warnings"])
    vm = next(r for r in doc["resources"] if r["type"] == "aws:ec2/keyPair:KeyPair")
    assert "fedcloud-preview-placeholder" in json.dumps(vm["properties"])
