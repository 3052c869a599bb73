"""The round-robin circle of a participant's eligible VMs, and its persisted position.

The eligible VMs form a circle in inventory order; a task goes to the VM after the one used
last. The position is persisted per participant under the stack's state directory
(``<state>/orchestrator/queue-<participant>.json``, written atomically).
"""

from __future__ import annotations

import datetime as dt
import json
import os
from collections.abc import Sequence
from pathlib import Path

from fedcloud.core.errors import FedcloudError, OrchestratorError
from fedcloud.core.files import KIB_BYTES, read_bounded, short, write_json_atomic

QUEUE_DIR = "orchestrator"
"""Directory of the queue files under the stack's state directory."""
QUEUE_MAX_BYTES = 64 * KIB_BYTES
"""A queue file names a few VMs: a few hundred bytes."""


def rotation(inventory: Sequence[str], eligible: Sequence[str], last: str | None) -> list[str]:
    """Return the eligible VMs in circle order, starting after ``last`` (a pure function).

    The circle follows the inventory order; a ``last`` that is no longer eligible still marks
    the position, so the circle moves on from where it stood.
    """
    wanted = set(eligible)
    members = [vm for vm in inventory if vm in wanted]
    if last is None or last not in inventory:
        return members
    pos = inventory.index(last)
    after = [vm for vm in members if inventory.index(vm) > pos]
    return after + [vm for vm in members if inventory.index(vm) <= pos]


def read_queue(path: Path) -> str | None:
    """Return the VM named last in the queue file ``path`` (``None``: no file, or no task yet).

    Raises:
        OrchestratorError: The file is not a bounded regular file, not UTF-8 JSON, or not a
            queue file (an object whose ``last`` is a VM id or null); names the file.
    """
    fix = f"delete or move {path} aside; the circle restarts at the first eligible VM."
    if not os.path.lexists(path):
        return None
    try:
        data = read_bounded(path, QUEUE_MAX_BYTES, "a round-robin queue file",
                            error=OrchestratorError, fix=fix)
        doc = json.loads(data.decode("utf-8"))
    except FedcloudError:
        raise
    except UnicodeDecodeError as exc:
        raise OrchestratorError(f"{path}: byte {exc.start} is not UTF-8 (a round-robin queue "
                                "file expected).", fix) from None
    except (ValueError, RecursionError) as exc:
        reason = exc.msg if isinstance(exc, json.JSONDecodeError) else "nested too deep"
        raise OrchestratorError(f"{path}: unreadable round-robin queue ({short(reason, 80)}).",
                                fix) from None
    last = doc.get("last") if isinstance(doc, dict) else None
    if not isinstance(doc, dict) or not isinstance(last, str | None):
        raise OrchestratorError(f"{path}: not a round-robin queue file.", fix)
    return last


class QueueStore:
    """The per-participant circle positions under ``<state>/orchestrator/``.

    Args:
        state_dir: The stack's state directory (``RawConfig.state_dir``).
    """

    def __init__(self, state_dir: Path) -> None:
        self.dir = Path(state_dir) / QUEUE_DIR

    def path(self, participant: str) -> Path:
        """The participant's queue file."""
        return self.dir / f"queue-{participant}.json"

    def last(self, participant: str) -> str | None:
        """Return the VM the participant's last task went to (``None`` before the first).

        Raises:
            OrchestratorError: The file exists but is not a queue file.
        """
        return read_queue(self.path(participant))

    def record(self, participant: str, circle: Sequence[str], last: str) -> None:
        """Persist the circle and the VM used last (atomically: a crash keeps the old file)."""
        doc = {"participant": participant, "circle": list(circle), "last": last,
               "updated": dt.datetime.now(dt.UTC).isoformat(timespec="seconds")}
        write_json_atomic(self.path(participant), doc)
