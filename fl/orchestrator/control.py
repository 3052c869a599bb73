"""The SuperLink's node list read over its Control API in this process, without the ``flwr`` CLI.

``flwr supernode list`` pays a Python start-up per call (about 1.7 s idle, several seconds on a
loaded machine), and a dispatch asks for the list while nodes come online. This sends the CLI's
own request (``ListNodes``, flwr 1.41's protobuf-over-HTTP client) on the connection the CLI uses
(``[superlink.NAME]`` in ``$FLWR_HOME/config.toml``). See fl/README.md, "Dynamic Task Orchestrator".
"""

from __future__ import annotations

import ssl
import threading
import tomllib
from dataclasses import dataclass
from pathlib import Path

from flwr.cli.cli_client_interceptor import CliClientHttpInterceptor
from flwr.proto.control_pb2 import ListNodesRequest
from flwr.supercore.control import ControlHttpClient
from flwr.supercore.interceptors import RuntimeVersionHttpInterceptor

from fedcloud.core.errors import OrchestratorError

LIST_TIMEOUT_S = 10.0
"""Bound on one ``ListNodes`` request (connect and read)."""


@dataclass(frozen=True)
class ControlNode:
    """One SuperNode as the Control API reports it (the fields ``SuperLinkNodes`` reads)."""

    node_id: int
    status: str
    online_at: str

    @property
    def online(self) -> bool:
        """Whether the SuperLink currently sees the node."""
        return self.status == "online"


class ControlApiLister:
    """``list_nodes(connection)`` over one kept-alive Control API client (thread-safe).

    Args:
        address: The Control API's ``host:port``.
        root_certificates: The CA that signed the SuperLink's certificate (``None``: insecure,
            development only).
    """

    def __init__(self, address: str, root_certificates: Path | None) -> None:
        self.address = address
        self.root_certificates = root_certificates
        self._lock = threading.Lock()
        self._client: ControlHttpClient | None = None

    @classmethod
    def from_config(cls, config_path: Path, connection: str) -> ControlApiLister | None:
        """The lister for ``[superlink.<connection>]`` of a CLI config (``None``: not there)."""
        try:
            doc = tomllib.loads(config_path.read_text(encoding="utf-8"))
        except (OSError, tomllib.TOMLDecodeError):
            return None
        conn = doc.get("superlink", {}).get(connection)
        if not isinstance(conn, dict) or not isinstance(conn.get("address"), str):
            return None
        certs = conn.get("root-certificates")
        if conn.get("insecure") is True:
            return cls(conn["address"], None)
        if not isinstance(certs, str):
            return None
        return cls(conn["address"], Path(certs))

    def _connect(self) -> ControlHttpClient:
        if self._client is None:
            verify: ssl.SSLContext | bool = False
            scheme = "http"
            if self.root_certificates is not None:
                scheme = "https"
                verify = ssl.create_default_context(cafile=str(self.root_certificates))
            self._client = ControlHttpClient(
                f"{scheme}://{self.address}", verify=verify, timeout=LIST_TIMEOUT_S,
                interceptors=[CliClientHttpInterceptor(),
                              RuntimeVersionHttpInterceptor(component_name="flwr CLI")])
        return self._client

    def list_nodes(self, connection: str) -> list[ControlNode]:
        """Return the SuperLink's node list (``connection`` names it in errors only).

        Raises:
            OrchestratorError: The Control API did not answer (one line, with the address).
        """
        with self._lock:
            try:
                res = self._connect().ListNodes(ListNodesRequest())
            except Exception as exc:  # httpx, TLS and Flower's own errors alike
                raise OrchestratorError(
                    f"the SuperLink's Control API at {self.address} (connection '{connection}')"
                    f" did not list its nodes: {type(exc).__name__}: {exc}.",
                    "check that the SuperLink is running and its CA is the connection's "
                    "root-certificates.") from None
        return [ControlNode(int(n.node_id), str(n.status), str(n.last_activated_at or ""))
                for n in res.nodes_info]

    def close(self) -> None:
        """Close the HTTP client (a later call opens a new one)."""
        with self._lock:
            if self._client is not None:
                self._client.close()
                self._client = None
