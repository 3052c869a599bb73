"""Test helpers for the Model Manager: fresh MLflow stores without paying for migrations.

Creating an MLflow SQLite database runs every schema migration (5-12 s on the shared machine);
an empty database is created once per test process and copied for each new store.
"""

from __future__ import annotations

import atexit
import functools
import shutil
import tempfile
from pathlib import Path

from fl.app.store import DB_FILE
from fl.registry.store import open_store


@functools.cache
def _template_db() -> Path:
    root = Path(tempfile.mkdtemp(prefix="fedcloud-mlflow-template-"))
    atexit.register(shutil.rmtree, root, True)
    # The first call migrates the schema (and MLflow inserts its "Default" experiment); no
    # experiment of ours, so a copy holds nothing but what its test records.
    open_store(str(root), "fedcloud-template").client.search_experiments()
    return root / DB_FILE


def fresh_store_dir(directory: Path) -> str:
    """Seed ``directory`` with an empty, migrated store database; return it as a location."""
    directory.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(_template_db(), directory / DB_FILE)
    return str(directory)
