"""Dispatch and train: the one composition of orchestrator and FL Initializer.

Both compositions call :func:`run_federation`: the Pulumi program's dispatch provider
(``infra/providers.py``) against the aggregator VM in the cloud, and the local stack
(``fedcloud/local.py``) against a SuperLink on this machine. It

1. registers each participant's node public key with the SuperLink (``flwr supernode
   register``; idempotent);
2. dispatches one SuperNode per participant with the Dynamic Task Orchestrator (filter, circular
   queue, start over SSH, retry on the next VM), all participants in parallel;
3. runs the training with the FL Initializer while the orchestrator's watcher re-dispatches a
   participant whose SuperNode died;
4. stops the SuperNodes it started, whatever happened.

The output mappers give the ``participants`` and ``training`` stack outputs (camelCase), the same
keys from either composition.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fedcloud.core.config import RawConfig
from fedcloud.core.participants import Participant
from fl.app.runconfig import RunConfig
from fl.initializer.flwr_cli import FlwrCli
from fl.initializer.training import CONNECTION, TrainingResult, register_nodes, start_training
from fl.orchestrator.orchestrator import (
    DispatchResult,
    NodeLaunch,
    Orchestrator,
    SuperLinkNodes,
    load_settings,
)
from fl.orchestrator.ssh import Transport


@dataclass(frozen=True)
class FederationResult:
    """What one federated job produced.

    Attributes:
        dispatch: Per-participant dispatch results (VM used, every VM tried and why it failed).
        training: The training run's result; ``None`` when no participant could be dispatched.
    """

    dispatch: DispatchResult
    training: TrainingResult | None


def run_federation(
    raw: RawConfig,
    participants: Sequence[Participant],
    *,
    superlink: str,
    ca_cert: Path,
    node_keys: Mapping[str, tuple[Path, Path]],
    run_config: RunConfig,
    transport: Transport,
    cli: FlwrCli | None = None,
    on_dispatched: Callable[[DispatchResult], None] | None = None,
    on_round: Callable[[dict[str, Any]], None] | None = None,
) -> FederationResult:
    """Register the nodes, dispatch the SuperNodes, train, and stop the SuperNodes.

    Args:
        raw: The stack's config (orchestrator settings, state directory).
        participants: The federation, with each participant's VM inventory and data path.
        superlink: The SuperLink's ``host:port`` as the VMs and this machine reach it.
        ca_cert: The deployment CA certificate.
        node_keys: Participant -> (private key, public key) paths of its node identity.
        run_config: The Flower run config.
        transport: The SSH transport to the VMs (host keys pinned).
        cli: The ``flwr`` wrapper (default: one on ``<state>/flwr-home``).
        on_dispatched: Called once with the dispatch results, before training starts.
        on_round: Called with each round's metrics as they arrive.

    Returns:
        The dispatch results and, when at least one participant was placed, the training result
        (a failed run is a result with its status, not an exception).

    Raises:
        TrainingError: The SuperLink could not be reached, a key registered or the run submitted.
    """
    cli = cli or FlwrCli(raw.state_dir / "flwr-home")
    cli.write_connection(CONNECTION, superlink, ca_cert)
    public = {name: pair[1] for name, pair in node_keys.items()}
    node_ids = register_nodes(cli, CONNECTION, superlink, public)
    launches = {
        p.name: NodeLaunch(superlink=superlink, ca_cert=ca_cert, node_key=node_keys[p.name][0],
                           data_dir=p.data_dir or "data")
        for p in participants
    }
    orchestrator = Orchestrator(
        participants, launches, transport=transport,
        nodes=SuperLinkNodes(cli, CONNECTION,
                             {k: v for k, v in node_ids.items() if v is not None}),
        settings=load_settings(raw), state_dir=raw.state_dir)
    dispatched = orchestrator.dispatch()
    if on_dispatched is not None:
        on_dispatched(dispatched)
    if not dispatched.succeeded:
        return FederationResult(dispatched, None)
    placements = dispatched.placements()
    try:
        with orchestrator.watcher(placements):
            trained = start_training(superlink=superlink, ca_cert=ca_cert, node_keys=public,
                                     run_config=run_config, state_dir=raw.state_dir, cli=cli,
                                     on_round=on_round)
    finally:
        orchestrator.stop(placements)
    return FederationResult(dispatched, trained)


def participants_output(result: DispatchResult) -> dict[str, Any]:
    """``DispatchResult`` -> ``{name: {vm, attempts, status, error, tried, ineligible}}``."""
    return {
        name: {
            "vm": r.vm_id,
            "attempts": len(r.attempts),
            "status": "dispatched" if r.ok else "failed",
            "error": r.error,
            "tried": [{"vm": a.vm_id, "ok": a.ok, "stage": a.stage, "reason": a.reason}
                      for a in r.attempts],
            "ineligible": dict(sorted(r.ineligible.items())),
        }
        for name, r in sorted(result.items())
    }


def training_output(tr: TrainingResult | None) -> dict[str, Any]:
    """``TrainingResult`` -> ``{runId, status, detail, rounds, bestModel, ...}`` (JSON-able).

    ``bestModel`` is the completed round with the highest F1; ``fedcloud models best`` chooses
    with other criteria from the registry.
    """
    if tr is None:
        return {"runId": None, "status": "NOT_STARTED", "detail": "no participant dispatched",
                "rounds": 0, "bestModel": None}
    best = None
    scored = [r for r in tr.rounds if isinstance((r.get("metrics") or {}).get("f1"), int | float)]
    if scored:
        top = max(scored, key=lambda r: (r["metrics"]["f1"], -int(r.get("round") or 0)))
        best = {"round": top.get("round"), "metrics": top.get("metrics"),
                "storeRunId": tr.store_run_id}
    return {"runId": str(tr.run_id), "status": tr.status, "detail": tr.detail,
            "flowerStatus": tr.flower_status, "rounds": len(tr.rounds), "bestModel": best,
            "elapsedS": tr.elapsed_s, "networkBytes": tr.network_bytes,
            "storeRunId": tr.store_run_id}
