"""A Flower federation of local processes on loopback, for tests and benchmarks.

:func:`local_federation` starts certificates, a TLS SuperLink with node authentication, the
``flwr`` CLI with every key registered and one SuperNode per participant, all online, and stops
them at exit; :func:`start_local_superlink` is the SuperLink part alone.
See fl/README.md, "Local federations".
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from fedcloud.core.procs import ManagedProcess
from fl.initializer.certs import DeploymentCerts, ensure_deployment_certs
from fl.initializer.flwr_cli import FlwrCli
from fl.initializer.superlink import (
    SuperLinkProcess,
    SupervisedSuperLink,
    free_port,
    start_superlink,
)
from fl.initializer.training import CONNECTION, register_nodes
from fl.orchestrator.supernode import MAX_WAIT_TIME_S, start_supernode

# How long the SuperNodes may take to show up online (they start at once on shared cores).
ONLINE_TIMEOUT_S = 120.0


@dataclass
class LocalSuperLink:
    """A running local SuperLink with the participants' keys registered.

    Attributes:
        root: Work directory (certificates, SuperLink state, ``flwr-home/``).
        certs: The deployment's CA, server certificate and node keys.
        link: The SuperLink (stop it with ``link.stop()``); supervised, it is started again
            on the same port and database when it dies.
        cli: ``flwr`` on the deployment's own ``FLWR_HOME``, connection
            ``fl.initializer.training.CONNECTION`` written.
        node_keys: Participant -> its registered public key.
        node_ids: Participant -> its node id (participants whose id is unknown are left out).
    """

    root: Path
    certs: DeploymentCerts
    link: SuperLinkProcess | SupervisedSuperLink
    cli: FlwrCli
    node_keys: dict[str, Path]
    node_ids: dict[str, int]


@dataclass
class LocalFederation(LocalSuperLink):
    """A running local federation: the SuperLink part plus one online SuperNode per participant.

    Attributes:
        data: Participant -> its data directory.
        nodes: Participant -> its SuperNode process.
    """

    data: dict[str, Path] = field(default_factory=dict)
    nodes: dict[str, ManagedProcess] = field(default_factory=dict)


def start_local_superlink(root: Path, participants: Sequence[str], *,
                          link_host: str, supervised: bool = False) -> LocalSuperLink:
    """Create the certificates, start the SuperLink and register every participant's key.

    Args:
        root: Work directory (``certs/``, ``superlink/`` and ``flwr-home/`` go there).
        participants: Participant names (one node key each).
        link_host: Loopback address the SuperLink binds (also in its certificate's SAN).
        supervised: Restart the SuperLink when it dies, as the aggregator's unit does.

    Returns:
        The running SuperLink; the caller stops ``.link``. On an error the SuperLink is stopped
        before the exception propagates.

    Raises:
        TrainingError: A key could not be registered.
    """
    certs = ensure_deployment_certs(root / "certs", [link_host], participants)
    port = free_port(link_host)

    def start() -> SuperLinkProcess:
        return start_superlink(root / "superlink", host=link_host, port=port,
                               ca_cert=certs.ca.cert, server_cert=certs.server.cert,
                               server_key=certs.server.key)

    link: SuperLinkProcess | SupervisedSuperLink = SupervisedSuperLink(start) if supervised \
        else start()
    try:
        cli = FlwrCli(root / "flwr-home")
        cli.write_connection(CONNECTION, link.address, certs.ca.cert)
        keys = {n: certs.nodes[n].public_key for n in participants}
        registered = register_nodes(cli, CONNECTION, link.address, keys)
    except BaseException:
        link.stop()
        raise
    node_ids = {n: int(i) for n, i in registered.items() if i is not None}
    return LocalSuperLink(root, certs, link, cli, keys, node_ids)


@contextmanager
def local_federation(root: Path, participants: Sequence[str], data_dirs: Mapping[str, Path], *,
                     link_host: str, node_hosts: Mapping[str, str], torch_threads: int = 0,
                     max_wait_time_s: float = MAX_WAIT_TIME_S,
                     online_timeout_s: float = ONLINE_TIMEOUT_S,
                     supervised: bool = False) -> Iterator[LocalFederation]:
    """Start a SuperLink and one SuperNode per participant; stop them all at exit.

    Args:
        root: Work directory (see :func:`start_local_superlink`; nodes go to ``nodes/<name>``).
        participants: Participant names, in start order.
        data_dirs: Participant -> its data directory.
        link_host: Loopback address of the SuperLink.
        node_hosts: Participant -> the loopback address its SuperNode's runtime listens on.
        torch_threads: Threads each ClientApp's torch may use (0: torch's default).
        max_wait_time_s: The SuperNodes' ``--max-wait-time``.
        online_timeout_s: How long to wait for every registered node to be online.
        supervised: Restart the SuperLink when it dies (see :func:`start_local_superlink`).

    Yields:
        The running federation, every registered node online.

    Raises:
        TrainingError: A key could not be registered, or a node is not online in time.
    """
    fed = start_local_superlink(root, participants, link_host=link_host, supervised=supervised)
    nodes: dict[str, ManagedProcess] = {}
    try:
        for name in participants:
            host = node_hosts[name]
            nodes[name] = start_supernode(
                root / "nodes" / name, superlink=fed.link.address, data_dir=data_dirs[name],
                participant=name, ca_cert=fed.certs.ca.cert,
                private_key=fed.certs.nodes[name].private_key, runtime_host=host,
                runtime_port=free_port(host), max_wait_time_s=max_wait_time_s,
                torch_threads=torch_threads)
        fed.cli.wait_online(CONNECTION, list(fed.node_ids.values()), online_timeout_s)
        yield LocalFederation(fed.root, fed.certs, fed.link, fed.cli, fed.node_keys,
                              fed.node_ids, data=dict(data_dirs), nodes=nodes)
    finally:
        for proc in nodes.values():
            proc.stop()
        fed.link.stop()
