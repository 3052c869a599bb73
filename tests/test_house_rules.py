"""The codebase's own limits: module and function sizes, wording, one atomic-write helper."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("fedcloud", "fl", "infra", "optimizer")
MAX_MODULE_LINES = 500
MAX_FUNCTION_LINES = 80
MAX_MODULE_DOCSTRING_LINES = 12
# Words about people or how the work was organised; code speaks of the product only.
FORBIDDEN = re.compile(r"the lead|the brief|flower engineer|the engineer", re.IGNORECASE)
# The one atomic-write helper, and the Flower app's own copy (the app ships alone in the FAB).
ATOMIC_WRITERS = {"fedcloud/core/files.py", "fl/app/cache.py"}


def sources() -> list[Path]:
    files = [ROOT / "__main__.py"]
    for package in PACKAGES:
        files += sorted((ROOT / package).rglob("*.py"))
    return files


def rel(path: Path) -> str:
    return str(path.relative_to(ROOT))


def test_no_module_over_the_line_limit() -> None:
    long = {rel(p): n for p in sources()
            if (n := len(p.read_text(encoding="utf-8").splitlines())) > MAX_MODULE_LINES}
    assert long == {}


def test_no_function_over_the_line_limit() -> None:
    long = {}
    for path in sources():
        tree = ast.parse(path.read_text(encoding="utf-8"))
        for node in ast.walk(tree):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                assert node.end_lineno is not None
                size = node.end_lineno - node.lineno + 1
                if size > MAX_FUNCTION_LINES:
                    long[f"{rel(path)}:{node.name}"] = size
    assert long == {}


def test_module_docstrings_are_short() -> None:
    long = {}
    for path in sources():
        doc = ast.get_docstring(ast.parse(path.read_text(encoding="utf-8")))
        if doc is not None and len(doc.splitlines()) > MAX_MODULE_DOCSTRING_LINES:
            long[rel(path)] = len(doc.splitlines())
    assert long == {}


def test_every_module_says_what_it_is_for() -> None:
    missing = [rel(p) for p in sources()
               if p.stat().st_size and ast.get_docstring(ast.parse(p.read_text())) is None]
    assert missing == []


@pytest.mark.parametrize("suffix", [".py", ".md"])
def test_code_and_docs_speak_of_the_product_only(suffix: str) -> None:
    files = [p for p in ROOT.rglob(f"*{suffix}")
             if not {".venv", ".git", ".fedcloud", "node_modules"} & set(p.parts)]
    hits = [f"{rel(p)}:{i}" for p in files
            for i, line in enumerate(p.read_text(encoding="utf-8").splitlines(), 1)
            if FORBIDDEN.search(line) and p.name != "test_house_rules.py"]
    assert hits == []


def test_one_atomic_write_helper() -> None:
    writers = {rel(p) for p in sources() if "os.replace(" in p.read_text(encoding="utf-8")}
    assert writers <= ATOMIC_WRITERS | {"fl/initializer/bundle.py"}, writers - ATOMIC_WRITERS
