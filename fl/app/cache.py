"""Each participant's decoded data, kept on its own VM so a round's ClientApp does not decode again.

Flower starts one ``flwr-clientapp`` process per message, so an in-memory cache would not live
past a round. The decoded uint8 split is saved once per (model, data files, split, image size)
under ``<cache-dir>/`` (node config ``cache-dir``, else ``$XDG_CACHE_HOME/fedcloud/data`` or
``~/.cache/fedcloud/data``), mode 0600, and found again by a key over the source files' names,
sizes and modification times: a changed file is a new key. The cache never leaves the VM.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import tempfile
from pathlib import Path

import numpy as np

from fl.app.data import Split, load_raw, scaled, source_files

CACHE_ENV = "XDG_CACHE_HOME"
FORMAT = 1


def default_root() -> Path:
    """``$XDG_CACHE_HOME/fedcloud/data``, or ``~/.cache/fedcloud/data``."""
    base = os.environ.get(CACHE_ENV) or str(Path.home() / ".cache")
    return Path(base) / "fedcloud" / "data"


def cache_key(model: str, data_dir: Path, split: str, image_size: int) -> str:
    """A digest of what the decoded split depends on: files (name, size, mtime) and settings."""
    files = []
    for path in source_files(model, data_dir, split):
        stat = path.stat()
        files.append([str(path.resolve()), stat.st_size, stat.st_mtime_ns])
    doc = {"format": FORMAT, "model": model, "split": split, "image_size": image_size,
           "files": files}
    return hashlib.sha256(json.dumps(doc, sort_keys=True).encode()).hexdigest()[:32]


def _save(path: Path, raw: Split) -> None:
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".part-", suffix=".npz")
    try:
        with os.fdopen(fd, "wb") as handle:
            np.savez(handle, x=raw.x, y=raw.y)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _load(path: Path) -> Split | None:
    try:
        with np.load(path, allow_pickle=False) as doc:
            return Split(np.array(doc["x"]), np.array(doc["y"]))
    except (OSError, ValueError, KeyError):
        return None  # missing or unreadable: decode again


def load_split_cached(model: str, data_dir: Path, split: str, image_size: int,
                      root: Path | None = None) -> Split:
    """The split ready for the model, decoded once per node and then read from the cache.

    A cache that cannot be written (read-only home, full disk) is skipped: the split is
    decoded as before.
    """
    key = cache_key(model, data_dir, split, image_size)
    path = (root or default_root()) / f"{key}.npz"
    raw = _load(path)
    if raw is None:
        raw = load_raw(model, data_dir, split, image_size)
        with contextlib.suppress(OSError):
            _save(path, raw)
    return scaled(raw)
