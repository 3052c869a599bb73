"""The GitHub workflows (.github/workflows/pulumi-*.yml) cannot run here: check what they say."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
import yaml

from fedcloud.core.config import ROOT, available_stacks

WORKFLOWS = ROOT / ".github" / "workflows"


def load(name: str) -> dict[str, Any]:
    doc = yaml.safe_load((WORKFLOWS / name).read_text(encoding="utf-8"))
    assert isinstance(doc, dict)
    doc["on"] = doc.pop(True, doc.get("on"))  # YAML 1.1 reads the key `on` as true
    return doc


def pulumi_steps(doc: dict[str, Any]) -> list[dict[str, Any]]:
    return [s for job in doc["jobs"].values() for s in job["steps"]
            if str(s.get("uses", "")).startswith("pulumi/actions@")]


def cloud_stacks() -> list[str]:
    return [s for s in available_stacks() if s != "local"]


def test_preview_on_pull_requests_with_diff_and_comment() -> None:
    doc = load("pulumi-preview.yml")
    assert "pull_request" in doc["on"]
    assert doc["permissions"]["pull-requests"] == "write"
    job = doc["jobs"]["preview"]
    assert sorted(job["strategy"]["matrix"]["stack"]) == sorted(cloud_stacks())
    (step,) = pulumi_steps(doc)
    assert step["with"]["command"] == "preview"
    assert step["with"]["diff"] is True
    assert step["with"]["comment-on-pr"] is True
    assert step["with"]["stack-name"] == "${{ matrix.stack }}"


def test_up_on_main_for_one_chosen_stack() -> None:
    doc = load("pulumi-up.yml")
    assert doc["on"]["push"]["branches"] == ["main"]
    options = doc["on"]["workflow_dispatch"]["inputs"]["stack"]["options"]
    assert set(options) <= set(available_stacks()) and "local" not in options
    default = re.search(r"'([\w-]+)' }}$", doc["env"]["STACK"])
    assert default is not None and default.group(1) in available_stacks()
    job = doc["jobs"]["up"]
    assert "self-hosted" in job["runs-on"]  # dispatch runs from the operator's address
    (step,) = pulumi_steps(doc)
    assert step["with"]["command"] == "up"
    assert step["with"]["stack-name"] == "${{ env.STACK }}"


@pytest.mark.parametrize("path", sorted(WORKFLOWS.glob("pulumi-*.yml")), ids=lambda p: p.name)
def test_secrets_come_from_repository_secrets(path: Path) -> None:
    doc = load(path.name)
    assert doc["env"]["PULUMI_CONFIG_PASSPHRASE"] == "${{ secrets.PULUMI_CONFIG_PASSPHRASE }}"
    (step,) = pulumi_steps(doc)
    assert step["with"]["cloud-url"] == "${{ secrets.PULUMI_BACKEND_URL }}"
    # every credential-like input is a repository secret, never a literal
    sensitive = re.compile(r"(?i)passphrase|credential|token|creds|role|password|secret")
    inputs = [*doc["env"].items()]
    for job in doc["jobs"].values():
        for s in job["steps"]:
            inputs += list((s.get("with") or {}).items()) + list((s.get("env") or {}).items())
    checked = [(k, v) for k, v in inputs if sensitive.search(str(k))]
    assert len(checked) >= 4
    for key, value in checked:
        assert re.fullmatch(r"\$\{\{ secrets\.[A-Z_]+ \}\}", str(value)), (key, value)
    assert doc["env"]["FLWR_TELEMETRY_ENABLED"] == "0"
    assert doc["env"]["FLWR_DISABLE_UPDATE_CHECK"] == "1"
    for job in doc["jobs"].values():
        for s in job["steps"]:
            if "uses" in s:
                assert re.match(r"^[\w.-]+/[\w.-]+@v\d+$", s["uses"]), s["uses"]
