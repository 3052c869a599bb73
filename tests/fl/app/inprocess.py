"""A Grid that runs the real ClientApp (with its mods) in this process, one Context per node.

The ServerApp's strategy talks to it through ``push_messages``/``pull_messages`` as it does to a
SuperLink; each node keeps its own ``Context.state`` across messages, as a SuperNode does, so
flwr's ``secaggplus_mod`` runs its real protocol. A node can be made to die after it answered a
given SecAgg+ stage (later messages get the error reply a SuperLink gives for a lost node).
``received`` holds every reply the ServerApp pulled: what the aggregator actually saw.
"""

from __future__ import annotations

import copy
import uuid
from pathlib import Path
from typing import Any

from flwr.app import Context, Error, Message, RecordDict
from flwr.common.secure_aggregation.secaggplus_constants import RECORD_KEY_CONFIGS, Key

from fl.app import client_app
from fl.app.runconfig import RunConfig

NODE_LOST = 2  # flwr's error code family for a message whose node is gone (any code will do)


class InProcessGrid:
    """Nodes ``1..n`` on the data directories given, answering at once."""

    def __init__(self, cfg: RunConfig, data_dirs: list[Path], cache: Path) -> None:
        self.contexts = {
            i: Context(run_id=1, node_id=i, state=RecordDict(), run_config=cfg.to_flower(),
                       node_config={"data-dir": str(d), "participant": f"p{i}",
                                    "torch-threads": 1, "cache-dir": str(cache)})
            for i, d in enumerate(data_dirs, start=1)}
        self.replies: dict[str, Message] = {}
        self.received: list[Message] = []
        self.sent: list[Message] = []
        self.dead: set[int] = set()
        self.die_after: dict[int, str] = {}

    def get_node_ids(self) -> list[int]:
        return sorted(n for n in self.contexts if n not in self.dead)

    def push_messages(self, messages: list[Message]) -> list[str]:
        ids = []
        for msg in messages:
            mid = str(uuid.uuid4())
            msg.metadata.__dict__["_message_id"] = mid
            self.sent.append(msg)
            self.replies[mid] = self._answer(msg)
            ids.append(mid)
        return ids

    def pull_messages(self, ids: list[str]) -> list[Message]:
        got = [self.replies.pop(i) for i in ids if i in self.replies]
        self.received += got
        return got

    def _answer(self, msg: Message) -> Message:
        node = msg.metadata.dst_node_id
        if node in self.dead:
            return Message(Error(code=NODE_LOST, reason="node lost"), reply_to=msg)
        stage = _stage(msg)
        # A SuperNode gets its own copy of every message (flwr's mod edits the one it gets).
        reply = client_app.app(copy.deepcopy(msg), self.contexts[node])
        if stage is not None and self.die_after.get(node) == stage:
            self.dead.add(node)
        return reply


def _stage(msg: Message) -> str | None:
    cfg: Any = msg.content.config_records.get(RECORD_KEY_CONFIGS)
    return None if cfg is None else str(cfg.get(Key.STAGE))
