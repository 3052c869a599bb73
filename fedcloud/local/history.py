"""What ``outputs.json`` says about attempts: this one's status beside the last complete run.

Every ``up`` writes the file, also when it fails or is interrupted: ``attempt`` holds this
attempt's status, error, phase and times; ``lastGood`` the outputs of the last complete run when
this attempt did not complete. See fedcloud/local/README.md.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from fedcloud.core.files import short, write_json_atomic

COMPLETED = "COMPLETED"
FAILED = "FAILED"
INTERRUPTED = "INTERRUPTED"
OUTPUT_KEYS = ("aggregator", "plan", "participants", "training")


def _when(epoch: float) -> str:
    return dt.datetime.fromtimestamp(epoch, dt.UTC).isoformat(timespec="seconds")


def last_good(previous: Mapping[str, Any] | None) -> dict[str, Any] | None:
    """The last complete run's outputs, from the ``outputs.json`` an earlier ``up`` wrote."""
    if not isinstance(previous, Mapping):
        return None
    attempt = previous.get("attempt")
    training = previous.get("training")
    if isinstance(attempt, Mapping):
        complete = attempt.get("status") == COMPLETED
    else:  # written before attempts were recorded
        complete = isinstance(training, Mapping) and training.get("status") == COMPLETED
    if complete:
        return {k: v for k, v in previous.items() if k != "lastGood"}
    kept = previous.get("lastGood")
    return dict(kept) if isinstance(kept, Mapping) else None


def attempt(status: str, started: float, error: str | None = None,
            phase: str | None = None) -> dict[str, Any]:
    """The ``attempt`` entry: status, error (one line), the phase it ended in, its times."""
    return {"status": status, "error": error, "phase": phase, "startedAt": _when(started),
            "endedAt": _when(dt.datetime.now(dt.UTC).timestamp())}


def record(path: Path, outputs: Mapping[str, Any], this: Mapping[str, Any],
           good: Mapping[str, Any] | None) -> dict[str, Any]:
    """Write ``outputs.json`` with this attempt's outputs (absent ones ``null``).

    Beside them: ``attempt``, and ``lastGood`` (``null`` when this attempt completed: the file
    itself is then the good one).
    """
    doc: dict[str, Any] = {k: None for k in OUTPUT_KEYS}
    doc.update(outputs)
    doc["attempt"] = dict(this)
    doc["lastGood"] = None if this.get("status") == COMPLETED else (dict(good) if good else None)
    write_json_atomic(path, doc)
    return doc


def summary(path: Path, doc: Mapping[str, Any]) -> str:
    """One line for the console: how this attempt ended and where the last good run is kept."""
    this = doc.get("attempt") or {}
    good = doc.get("lastGood")
    where = f"this attempt ({this.get('status')}) is recorded in {path} under 'attempt'"
    if not isinstance(good, Mapping):
        return f"{where}; no complete run is on record."
    training = good.get("training") if isinstance(good.get("training"), Mapping) else {}
    ended = (good.get("attempt") or {}).get("endedAt") if isinstance(
        good.get("attempt"), Mapping) else None
    run = short(training.get("runId") if isinstance(training, Mapping) else None)
    return (f"{where}; the last complete run (run {run}"
            f"{', ended ' + short(ended) if ended else ''}) is kept there under 'lastGood'.")
