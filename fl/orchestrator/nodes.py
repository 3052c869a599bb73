"""The SuperLink side of a dispatch: what a SuperNode needs, and whether it is online.

:class:`NodeLaunch` is what a participant's SuperNode needs wherever it lands (SuperLink address,
CA, node key, data directory). :class:`NodeDirectory` is the protocol the orchestrator asks
whether a node is online; :class:`SuperLinkNodes` implements it over ``flwr supernode list``.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from flwr.common.constant import HEARTBEAT_DEFAULT_INTERVAL, HEARTBEAT_PATIENCE

from fedcloud.core.control import ControlApi
from fedcloud.core.errors import OrchestratorError
from fl.app.exchange import epoch
from fl.orchestrator.supernode import MAX_WAIT_TIME_S

NODE_LIST_MAX_AGE_S = 1.0
"""Through the ``flwr`` CLI, the node list is fetched at most once per this interval for all
participants."""
CONTROL_LIST_MAX_AGE_S = 0.1
"""The same over the Control API in this process (:mod:`fedcloud.core.control`)."""
CLOCK_SKEW_S = 5.0
"""Tolerance between this machine's and the SuperLink's clocks when reading ``online-at``."""

ACTIVATION_HOLD_S = float(HEARTBEAT_PATIENCE * HEARTBEAT_DEFAULT_INTERVAL) + 3.0
"""Seconds after a SuperNode's death during which the SuperLink may refuse its key (63 s): the
dead session stays ONLINE until its last heartbeat + HEARTBEAT_PATIENCE x
HEARTBEAT_DEFAULT_INTERVAL (2 x 30 s in flwr 1.41), plus 3 s of margin; ``ActivateNode`` only
activates a REGISTERED or OFFLINE node (HTTP 412, ApiError 2004, otherwise)."""
NODE_START_S = 30.0
"""Allowance for a SuperNode process to start and activate once the SuperLink accepts it."""
SUPERVISED_REJOIN_S = ACTIVATION_HOLD_S + NODE_START_S
"""A SuperNode that died is online again through its supervisor within this many seconds
(93 s): a restart after the restart delay, refused, then one after ACTIVATION_HOLD_S."""

ONLINE, STALE, OFFLINE = "online", "stale", "offline"


@dataclass(frozen=True)
class NodeLaunch:
    """What a participant's SuperNode needs, wherever it lands.

    Attributes:
        superlink: The SuperLink's ``host:port`` as seen from the VMs.
        ca_cert: Local path of the deployment CA certificate.
        node_key: Local path of the participant's node private key (OpenSSH, registered).
        data_dir: The participant's data directory on its VMs (node config ``data-dir``).
        max_wait_time_s: The SuperNode's ``--max-wait-time``.
    """

    superlink: str
    ca_cert: Path
    node_key: Path
    data_dir: str
    max_wait_time_s: float = MAX_WAIT_TIME_S


class NodeDirectory(Protocol):
    """Whether a participant's SuperNode is online at the SuperLink."""

    def node_state(self, participant: str, since: float | None = None) -> str:
        """Return the node's state at the SuperLink.

        :data:`ONLINE`: online, and came online at or after epoch ``since``; :data:`STALE`:
        online since before ``since`` (an older session still holds the node id until its
        heartbeat expires); :data:`OFFLINE`: not online.
        """
        ...


class NodeEntry(Protocol):
    """One entry of the SuperLink's node list (``fl.initializer.flwr_cli.NodeInfo``)."""

    @property
    def node_id(self) -> int:
        """Flower's node id."""
        ...

    @property
    def online(self) -> bool:
        """Whether the SuperLink sees it now."""
        ...

    @property
    def online_at(self) -> str:
        """When it came online (ISO 8601)."""
        ...


class NodeLister(Protocol):
    """What :class:`SuperLinkNodes` needs of ``fl.initializer.flwr_cli.FlwrCli``."""

    def list_nodes(self, connection: str) -> Sequence[NodeEntry]:
        """Return the SuperLink's node list."""
        ...


class SuperLinkNodes:
    """:class:`NodeDirectory` over the SuperLink's node list.

    When the CLI's config (``cli.config_path``) holds the connection, the list comes from the
    Control API in this process (:class:`fedcloud.core.control.ControlApi`, a few ms;
    one call serves every participant's thread for :data:`CONTROL_LIST_MAX_AGE_S`); otherwise
    from ``cli.list_nodes`` (``flwr supernode list``, about 1.7 s, for
    :data:`NODE_LIST_MAX_AGE_S`).

    Args:
        cli: ``fl.initializer.flwr_cli.FlwrCli`` (or anything with ``list_nodes(connection)``).
        connection: The CLI's connection name for the SuperLink.
        node_ids: Participant to node id (from ``FlwrCli.register_node``).
    """

    def __init__(self, cli: NodeLister, connection: str, node_ids: Mapping[str, int]) -> None:
        self.cli = cli
        self.connection = connection
        self.node_ids = dict(node_ids)
        config = getattr(cli, "config_path", None)
        control = (ControlApi.from_config(config, connection)
                   if isinstance(config, Path) else None)
        self.lister: NodeLister = control if control is not None else cli
        self.max_age_s = CONTROL_LIST_MAX_AGE_S if control is not None else NODE_LIST_MAX_AGE_S
        self._lock = threading.Lock()
        self._fetched = float("-inf")
        self._online: dict[int, float | None] = {}

    def node_state(self, participant: str, since: float | None = None) -> str:
        """Return the participant's node state (see :meth:`NodeDirectory.node_state`)."""
        node_id = self.node_ids.get(participant)
        if node_id is None:
            raise OrchestratorError(f"participant '{participant}' has no registered node id.",
                                    "register its node key (flwr supernode register) first.")
        with self._lock:
            asked = time.monotonic()
            if asked - self._fetched >= self.max_age_s:
                nodes = self.lister.list_nodes(self.connection)
                self._online = {int(n.node_id): epoch(n.online_at) for n in nodes if n.online}
                self._fetched = asked  # the list is at least as new as the request
            if node_id not in self._online:
                return OFFLINE
            came = self._online[node_id]
        fresh = since is None or came is None or came >= since - CLOCK_SKEW_S
        return ONLINE if fresh else STALE
