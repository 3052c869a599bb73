"""Pulumi.yaml as the Pulumi CLI reads it: its JSON schema, then its own config checks.

The schema is the CLI's own (``sdk/go/common/workspace/project.json``, vendored in tests/data/,
see SCHEMAS.md). The rest mirrors what the CLI does after the schema: ``Project.Validate`` (no key
with both ``default`` and ``value``; a typed ``default`` of its type) and the stack merge, which
refuses a stack that leaves out a key with neither ``default`` nor ``value`` (a null ``default``
counts as none).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml

from fedcloud.core.config import ROOT

DATA = ROOT / "tests" / "data"
PROJECT = ROOT / "Pulumi.yaml"
STACK_FILES = sorted((ROOT / "stacks").glob("Pulumi.*.yaml"))
# Keys every stack must set; all others have a default.
REQUIRED = {"fedcloud:participants", "fedcloud:limits"}
TYPE_CHECKS = {"string": str, "integer": int, "boolean": bool, "array": list, "object": dict}


def project() -> dict[str, Any]:
    doc = yaml.safe_load(PROJECT.read_text(encoding="utf-8"))
    assert isinstance(doc, dict)
    return doc


def declarations() -> dict[str, dict[str, Any]]:
    return {k: v for k, v in project()["config"].items() if isinstance(v, dict)}


def has_default(decl: dict[str, Any]) -> bool:
    """What the CLI's stack merge tests: a non-null ``default`` or ``value``."""
    return decl.get("default") is not None or decl.get("value") is not None


def test_pulumi_yaml_matches_the_clis_project_schema() -> None:
    schema = json.loads((DATA / "pulumi-project.schema.json").read_text(encoding="utf-8"))
    validator = jsonschema.Draft202012Validator(schema)
    problems = [f"{'/'.join(map(str, e.absolute_path))}: {e.message}"
                for e in validator.iter_errors(project())]
    assert not problems, problems
    bad = {**project(), "config": {"fedcloud:x": {"type": "map", "default": 1}}}
    assert list(validator.iter_errors(bad))  # the schema does reject an unknown type


def test_config_declarations_pass_the_clis_project_checks() -> None:
    for key, decl in declarations().items():
        assert key.startswith("fedcloud:"), key  # namespaced by the project
        assert not ("default" in decl and "value" in decl), key
        if "type" in decl:
            if decl["type"] == "array":
                assert "items" in decl, key
            if "default" in decl:
                assert isinstance(decl["default"], TYPE_CHECKS[decl["type"]]), key
        assert decl.get("description"), f"{key} has no description"


def test_only_participants_and_limits_are_required_and_say_so() -> None:
    required = {k for k, d in declarations().items() if not has_default(d)}
    assert required == REQUIRED
    for key in required:
        assert declarations()[key]["description"].startswith("Required"), key


def test_optional_baseline_has_a_default_the_cli_applies() -> None:
    decl = declarations()["fedcloud:baseline"]
    assert "Optional" in decl["description"]
    assert decl["default"] == {}  # null would count as no default: the key would be required


@pytest.mark.parametrize("path", STACK_FILES, ids=lambda p: p.name)
def test_every_stack_sets_every_required_key(path: Path) -> None:
    stack = yaml.safe_load(path.read_text(encoding="utf-8"))
    missing = REQUIRED - set(stack.get("config") or {})
    assert not missing, f"the CLI refuses {path.name}: missing {sorted(missing)}"
