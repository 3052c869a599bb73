"""The SuperLink's Control API in this process: nodes, node registration, runs; no ``flwr`` CLI.

Each ``flwr supernode list|register`` or ``flwr ls`` pays a Python start-up (about 1.7 s idle,
several seconds on a loaded machine); a dispatch lists the nodes while they come online, a job
registers every participant's key first and reads its run's status last. This sends the CLI's
own requests (``ListNodes``, ``RegisterNode``, ``ListRuns``, flwr 1.41's protobuf-over-HTTP
client) on the connection the CLI uses (``[superlink.NAME]`` in ``$FLWR_HOME/config.toml``).
See fl/README.md, "Dynamic Task Orchestrator" and "FL Initializer".
"""

from __future__ import annotations

import ssl
import threading
import tomllib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import httpx
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from flwr.cli.cli_client_interceptor import CliClientHttpInterceptor
from flwr.cli.run_utils import format_runs
from flwr.common.serde import run_from_proto
from flwr.proto.control_pb2 import ListNodesRequest, ListRunsRequest, RegisterNodeRequest
from flwr.supercore.control import ControlHttpClient
from flwr.supercore.error import FlowerError
from flwr.supercore.interceptors import RuntimeVersionHttpInterceptor
from flwr.supercore.primitives.asymmetric import public_key_to_bytes, uses_nist_ec_curve

from fedcloud.core.errors import FedcloudError, OrchestratorError, TrainingError

T = TypeVar("T")

LIST_TIMEOUT_S = 10.0
"""Bound on one Control API request (connect and read)."""


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


class ControlApi:
    """``list_nodes``, ``register_node`` and ``list_runs`` over one kept-alive client (thread-safe).

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
    def from_config(cls, config_path: Path, connection: str) -> ControlApi | None:
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

    def _request(self, connection: str, what: str, error: type[FedcloudError],
                 call: Callable[[ControlHttpClient], T]) -> T:
        """One request on the kept-alive client; any failure is one ``error`` line naming it."""
        with self._lock:
            try:
                return call(self._connect())
            except Exception as exc:  # httpx, TLS and Flower's own errors alike
                raise error(
                    f"the SuperLink's Control API at {self.address} (connection '{connection}')"
                    f" did not {what}: {_reason(exc)}.",
                    "check that the SuperLink is running and its CA is the connection's "
                    "root-certificates.") from None

    def list_nodes(self, connection: str) -> list[ControlNode]:
        """Return the SuperLink's node list (``connection`` names it in errors only).

        Raises:
            OrchestratorError: The Control API did not answer (one line, with the address).
        """
        res = self._request(connection, "list its nodes", OrchestratorError,
                            lambda client: client.ListNodes(ListNodesRequest()))
        return [ControlNode(int(n.node_id), str(n.status), str(n.last_activated_at or ""))
                for n in res.nodes_info]

    def list_runs(self, connection: str, run_id: int | None = None) -> list[dict[str, Any]]:
        """The runs (or one run) as ``flwr ls --format json`` lists them (the keys fedcloud reads).

        Built with the CLI's own formatting (``flwr.cli.run_utils.format_runs``), so status,
        timestamps and traffic read the same as from the CLI.

        Raises:
            TrainingError: The Control API did not answer or does not know ``run_id``.
        """
        request = ListRunsRequest() if run_id is None else ListRunsRequest(run_id=run_id)
        res = self._request(connection, "list its runs", TrainingError,
                            lambda client: client.ListRuns(request))
        rows = format_runs([run_from_proto(r) for r in res.run_dict.values()], res.now)
        return [{"run-id": str(row.run_id), "status": row.status_text,
                 "status-details": row.details, "running-at": row.running_at,
                 "finished-at": row.finished_at,
                 "network-traffic": {"inbound-bytes": row.network_traffic_inbound,
                                     "outbound-bytes": row.network_traffic_outbound}}
                for row in rows]

    def register_node(self, public_key: Path, connection: str) -> int:
        """Register a SuperNode's public key (OpenSSH, a NIST EC curve); return its node id.

        Raises:
            TrainingError: The key cannot be read, or the SuperLink refused it; a key it already
                knows says "already in use", as ``flwr supernode register`` does.
        """
        try:
            key = serialization.load_ssh_public_key(public_key.read_bytes())
        except (OSError, ValueError, UnsupportedAlgorithm) as exc:
            raise TrainingError(f"cannot read the node public key {public_key}: {exc}.",
                                "generate it with fl.initializer.certs.make_node_key.") from None
        if not isinstance(key, ec.EllipticCurvePublicKey) or not uses_nist_ec_curve(key):
            raise TrainingError(f"node public key {public_key} is not on a NIST EC curve.",
                                "generate it with fl.initializer.certs.make_node_key.")
        request = RegisterNodeRequest(public_key=public_key_to_bytes(key))
        res = self._request(connection, f"register {public_key}", TrainingError,
                            lambda client: client.RegisterNode(request))
        if not res.node_id:
            raise TrainingError(f"the SuperLink at {self.address} registered no node for "
                                f"{public_key}.", "check the SuperLink log.")
        return int(res.node_id)

    def close(self) -> None:
        """Close the HTTP client (a later call opens a new one)."""
        with self._lock:
            if self._client is not None:
                self._client.close()
                self._client = None


def _reason(exc: Exception) -> str:
    """Flower's own message of a refused request (as the CLI shows it), else the error."""
    if isinstance(exc, httpx.HTTPStatusError):
        err = FlowerError.from_json(exc.response.text)
        if err is not None:
            return " ".join(part for part in (err.message, err.public_details) if part)
    return f"{type(exc).__name__}: {exc}"
