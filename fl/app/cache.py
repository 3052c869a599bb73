"""Each participant's decoded data, kept on its own VM so a round's ClientApp does not decode again.

Flower starts one ``flwr-clientapp`` process per message, so an in-memory cache would not live
past a round. The decoded uint8 split is saved once per (model, data files, split, image size)
under ``<cache-dir>/`` (node config ``cache-dir``, else ``$XDG_CACHE_HOME/fedcloud/data`` or
``~/.cache/fedcloud/data``), mode 0600, and found again by a key over the source files' names,
sizes and modification times: a changed file is a new key. Also each node's copy of the last
global model a float16 run sent it (``<cache-dir>/models/``). The cache never leaves the VM.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import tempfile
import time
from collections.abc import Collection
from pathlib import Path

import numpy as np

from fl.app.data import Split, load_raw, scaled, source_files

CACHE_ENV = "XDG_CACHE_HOME"
HELD_STALE_S = 6 * 3600.0  # a held model copy no round has touched for this long is dropped
HELD_RUN_IDLE_S = 600.0  # ... or this long, when the same node has moved on to another run
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
    _save_arrays(path, {"x": raw.x, "y": raw.y})


def _save_arrays(path: Path, arrays: dict[str, np.ndarray]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".part-", suffix=".npz")
    try:
        with os.fdopen(fd, "wb") as handle:
            np.savez(handle, **arrays)  # type: ignore[arg-type]
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


def held_path(root: Path | None, run_id: int, node_id: int) -> Path:
    """Where a node keeps its copy of a run's last global model (``fl.app.wire.Copies``).

    ``<cache-dir>/models/``, or ``models/`` beside the default data cache.
    """
    base = root / "models" if root is not None else default_root().parent / "models"
    return base / f"run-{run_id}-node-{node_id}.npz"


def save_held(path: Path, state: dict[str, np.ndarray], digest: str) -> None:
    """Keep ``state`` (atomically, mode 0600) and drop copies no longer needed.

    Dropped: this node's copies of other runs unused for :data:`HELD_RUN_IDLE_S` (two runs
    may share a SuperNode), and any copy unused for :data:`HELD_STALE_S` (node ids change
    with each registration). On disk rather than in the node's Flower run
    state, which travels between the SuperNode and the ClientApp process with every message.
    """
    node = path.name.rsplit("-node-", 1)[-1]
    now = time.time()
    if path.parent.is_dir():
        for old in path.parent.glob("run-*-node-*.npz"):
            with contextlib.suppress(OSError):  # this node's idle runs, or anyone's long idle
                idle = now - old.stat().st_mtime
                if old != path and (idle > HELD_STALE_S or (
                        old.name.endswith(f"-node-{node}") and idle > HELD_RUN_IDLE_S)):
                    old.unlink()
    _save_arrays(path, {**{f"a:{k}": v for k, v in state.items()},
                        "digest": np.array(digest)})


def load_held(path: Path, digests: Collection[str]) -> tuple[str, dict[str, np.ndarray]] | None:
    """The copy kept at ``path`` and its digest if that is one of ``digests``, else ``None``."""
    try:
        with np.load(path, allow_pickle=False) as doc:
            kept = str(doc["digest"])
            if kept not in digests:
                return None
            return kept, {k[2:]: np.array(doc[k]) for k in doc.files if k.startswith("a:")}
    except (OSError, ValueError, KeyError):
        return None
