"""One message exchange with the nodes, on the Grid's public push/pull calls, with a short poll.

Flower's ``Grid.send_and_receive`` sleeps 3 s between pulls (``superlink/grid/http_grid.py``);
:func:`exchange` pushes with ``Grid.push_messages`` and pulls with ``Grid.pull_messages`` every
:data:`REPLY_POLL_S` until every reply (or the SuperLink's error reply for a lost node) is in or
the deadline passes. Also the node listing with activation times the strategy's re-admission
reads. See fl/README.md, "One exchange per round".
"""

from __future__ import annotations

import datetime as dt
import time
from collections.abc import Iterable

from flwr.app import Message
from flwr.serverapp import Grid

# Seconds between pulls while replies are outstanding (one small request to the SuperLink).
REPLY_POLL_S = 0.1


def exchange(grid: Grid, messages: Iterable[Message], timeout_s: float,
             poll_s: float = REPLY_POLL_S) -> list[Message]:
    """Push ``messages`` and return the replies that arrived within ``timeout_s``.

    A message the SuperLink refused (its id is ``None``) gets no reply; the caller counts
    replies by the nodes it sent to.
    """
    waiting = {mid for mid in grid.push_messages(list(messages)) if mid}
    replies: list[Message] = []
    deadline = time.monotonic() + timeout_s
    while waiting:
        got = list(grid.pull_messages(sorted(waiting)))
        replies += got
        waiting -= {m.metadata.reply_to_message_id for m in got}
        if not waiting or time.monotonic() >= deadline:
            break
        time.sleep(poll_s)
    return replies


def online_nodes(grid: Grid) -> dict[int, float | None]:
    """Node id -> epoch seconds of its last activation (``None`` if the grid does not say).

    A node that died and came back holds a later activation than the phase it missed.
    """
    get_nodes = getattr(grid, "get_nodes", None)
    if get_nodes is None:  # a grid that only lists ids: no rejoin is seen
        return {int(n): None for n in grid.get_node_ids()}
    out: dict[int, float | None] = {}
    for info in get_nodes():
        out[int(info.node_id)] = epoch(str(getattr(info, "last_activated_at", "") or ""))
    return out


def epoch(text: str) -> float | None:
    """Epoch seconds of an ISO-8601 time (UTC if it names no zone), ``None`` if unreadable."""
    try:
        stamp = dt.datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        return None
    if stamp.tzinfo is None:
        stamp = stamp.replace(tzinfo=dt.UTC)
    return stamp.timestamp()
