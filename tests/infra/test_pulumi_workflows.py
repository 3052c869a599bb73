"""The GitHub workflows (.github/workflows/pulumi-*.yml) cannot run here: check what they say.

Besides what they say, they are checked with their ecosystem's tools that run offline: SchemaStore's
workflow schema (vendored in tests/data/), shellcheck on every ``run:`` script, and the
declarations actionlint needs in .github/actionlint.yaml (custom runner labels, ``vars``).
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import tomllib
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


# --- the ecosystems' own checks: SchemaStore's workflow schema, shellcheck, actionlint's config --

DATA = ROOT / "tests" / "data"
# What the program and its install read (a push that changes any of them must run `pulumi up`).
PROGRAM_INPUTS = {"__main__.py", "Pulumi.yaml", "stacks/**", "infra/**", "optimizer/**",
                  "fl/**", "fedcloud/**", "pyproject.toml", "overrides.txt"}
GITHUB_LABELS = re.compile(r"ubuntu-[\w.-]+|windows-[\w.-]+|macos-[\w.-]+|self-hosted|linux|"
                           r"x64|arm64")
WORKFLOW_FILES = sorted(WORKFLOWS.glob("pulumi-*.yml"))


def as_json_document(doc: dict[str, Any]) -> dict[str, Any]:
    """The workflow as GitHub reads it (YAML 1.2: the key ``on`` is the string "on")."""
    return {("on" if k is True else k): v for k, v in doc.items()}


@pytest.mark.parametrize("path", WORKFLOW_FILES, ids=lambda p: p.name)
def test_workflow_matches_schemastores_github_workflow_schema(path: Path) -> None:
    import jsonschema

    schema = json.loads((DATA / "github-workflow.schema.json").read_text(encoding="utf-8"))
    doc = as_json_document(yaml.safe_load(path.read_text(encoding="utf-8")))
    validator = jsonschema.Draft7Validator(schema)
    problems = [f"{'/'.join(map(str, e.absolute_path))}: {e.message}"
                for e in validator.iter_errors(doc)]
    assert not problems, problems
    broken = {**doc, "jobs": {"up": {"runs-on": "ubuntu-latest", "step": []}}}
    assert list(validator.iter_errors(broken))  # the schema does reject a bad job


@pytest.mark.parametrize("path", WORKFLOW_FILES, ids=lambda p: p.name)
def test_path_filters_cover_every_program_input(path: Path) -> None:
    doc = load(path.name)
    event = doc["on"]["pull_request" if "preview" in path.name else "push"]
    assert PROGRAM_INPUTS | {f".github/workflows/{path.name}"} == set(event["paths"])
    for pattern in event["paths"]:
        assert list(ROOT.glob(pattern.replace("**", "*"))), f"{pattern} matches nothing"


@pytest.mark.parametrize("path", WORKFLOW_FILES, ids=lambda p: p.name)
def test_pulumi_cli_is_pinned_to_the_sdk_release_and_creates_the_stack(path: Path) -> None:
    doc = load(path.name)
    (step,) = pulumi_steps(doc)
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))
    (sdk,) = [r for r in pyproject["project"]["dependencies"] if r.startswith("pulumi==")]
    cli = str(step["with"]["pulumi-version"])
    assert re.fullmatch(r"\d+\.\d+\.\d+", cli), cli  # one release, not a range
    # CLI and SDK are released together: the CLI must be a release the SDK pin allows
    assert re.fullmatch(sdk.removeprefix("pulumi==").replace(".", r"\.").replace("*", r"\d+"),
                        cli), (sdk, cli)
    assert step["with"]["upsert"] is True  # first use creates the stack


def actionlint_config() -> dict[str, Any]:
    doc = yaml.safe_load((ROOT / ".github" / "actionlint.yaml").read_text(encoding="utf-8"))
    assert isinstance(doc, dict)
    return doc


def test_actionlint_config_declares_every_custom_runner_label_and_variable() -> None:
    config = actionlint_config()
    labels = set(config["self-hosted-runner"]["labels"])
    used_labels: set[str] = set()
    used_vars: set[str] = set()
    for path in WORKFLOW_FILES:
        text = path.read_text(encoding="utf-8")
        used_vars |= set(re.findall(r"\bvars\.([A-Za-z_][A-Za-z0-9_]*)", text))
        for job in load(path.name)["jobs"].values():
            runs_on = job["runs-on"]
            for label in [runs_on] if isinstance(runs_on, str) else runs_on:
                if not GITHUB_LABELS.fullmatch(label):
                    used_labels.add(label)
    assert used_labels == {"fedcloud-operator"}
    assert used_labels <= labels
    assert used_vars == set(config["config-variables"]) == {"FEDCLOUD_STACK"}


def run_scripts(path: Path) -> list[tuple[str, str]]:
    """Every ``run:`` script of a workflow, ``${{ }}`` expressions replaced as actionlint does."""
    doc = load(path.name)
    out = []
    for job_name, job in doc["jobs"].items():
        for step in job["steps"]:
            if "run" in step:
                script = re.sub(r"\$\{\{.*?\}\}", lambda m: "_" * len(m.group(0)), step["run"])
                out.append((f"{job_name}: {step.get('name', step['run'][:30])}", script))
    return out


@pytest.mark.parametrize("path", WORKFLOW_FILES, ids=lambda p: p.name)
def test_shellcheck_accepts_every_run_script(path: Path, tmp_path: Path) -> None:
    shellcheck = shutil.which("shellcheck")
    if shellcheck is None:
        pytest.fail("shellcheck is not installed: `make test` installs it "
                    "(apt-get install shellcheck).")
    scripts = run_scripts(path)
    assert scripts
    for name, script in scripts:
        # GitHub runs `run:` with `bash -e {0}` on Linux runners
        file = tmp_path / "step.sh"
        file.write_text(script, encoding="utf-8")
        result = subprocess.run([shellcheck, "--shell=bash", "--severity=style", str(file)],
                                capture_output=True, text=True, timeout=60)
        assert result.returncode == 0, f"{path.name} / {name}:\n{result.stdout}"
    file.write_text('echo $undefined_dir/*\n', encoding="utf-8")
    assert subprocess.run([shellcheck, "--shell=bash", str(file)],
                          capture_output=True, timeout=60).returncode != 0


def test_secrets_never_expand_inside_scripts() -> None:
    # A secret spliced into a script lands in the script file on the runner; pass it as env.
    for path in WORKFLOW_FILES:
        for job in load(path.name)["jobs"].values():
            for step in job["steps"]:
                assert "secrets." not in step.get("run", ""), (path.name, step.get("name"))
