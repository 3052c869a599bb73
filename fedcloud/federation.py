"""The one federation path: from "a SuperLink answers" to "a trained model and the outputs".

Both compositions call :func:`run_federation` (the local stack directly, the Pulumi program
through its dispatch resource, :func:`run_dispatch`) and build their stack outputs with the
mappers here, so the output schema is declared once. See docs/architecture.md.
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fedcloud.core.config import from_mapping
from fedcloud.core.errors import RegistryError, TrainingError
from fedcloud.core.participants import Participant, VmSpec
from fedcloud.core.stack import StackConfig, parse
from fedcloud.core.training import TrainingSettings
from fl.initializer.flwr_cli import FlwrCli
from fl.initializer.training import CONNECTION, TrainingResult, register_nodes, start_training
from fl.orchestrator import (
    DispatchResult,
    NodeLaunch,
    Orchestrator,
    SuperLinkNodes,
)
from fl.orchestrator.ssh import ParamikoTransport, Transport
from fl.registry.criteria import Criteria, choose
from infra.cloudinit import AGGREGATOR_REGISTRY_DIR
from optimizer import PlanRequest, PlanResult, plan

log = logging.getLogger(__name__)

# The stack's keys whose change means a new training run (the Pulumi dispatch resource's diff).
DISPATCH_KEYS = ("participants", "training", "orchestrator", "registry", "bestModel", "stateDir")


@dataclass(frozen=True)
class Aggregator:
    """A running SuperLink as this machine and the participants' VMs reach it.

    Attributes:
        address: ``host:port`` of the SuperLink's Fleet/Control API.
        ca_cert: The deployment CA certificate.
        node_keys: Participant -> (private key, public key) paths of its node identity.
        tracking_uri: Where the ServerApp records rounds, as the aggregator sees it.
        store: The same store as this machine reads it, or ``None`` when it is remote.
    """

    address: str
    ca_cert: Path
    node_keys: Mapping[str, tuple[Path, Path]]
    tracking_uri: str
    store: str | None


@dataclass(frozen=True)
class FederationResult:
    """What one federated job produced.

    Attributes:
        dispatch: Per-participant dispatch results (VM used, every VM tried and why).
        training: The training run's result; ``None`` when no participant was dispatched.
        best: The ``bestModel`` output (``None`` unless the run completed with rounds).
        protection: The ``protection`` output (:func:`protection_output`).
    """

    dispatch: DispatchResult
    training: TrainingResult | None
    best: dict[str, Any] | None = None
    protection: dict[str, Any] | None = None


def offered_clouds(cfg: StackConfig) -> list[str]:
    """The clouds the optimizer may use: ``fedcloud:clouds``, filtered by ``auth.onlyLinked``."""
    from infra.auth import offerable_clouds

    return offerable_clouds(cfg.auth, cfg.state_dir, cfg.stack, list(cfg.plan.clouds))


def plan_request(cfg: StackConfig) -> PlanRequest:
    """The optimizer's request for a stack, checked against the catalogue."""
    return PlanRequest.build(cfg.plan, cfg.participants, offered_clouds(cfg), cfg.stack)


def criteria(cfg: StackConfig) -> Criteria:
    """The Model Manager's criteria for the run's best round (``fedcloud:bestModel``)."""
    return Criteria.parse(cfg.best_model.metric, cfg.best_model.minimums)


def validate(cfg: StackConfig) -> PlanResult:
    """Check everything that can be checked before anything starts; return the plan.

    Both compositions call it once per run: it logs the warning of a stack whose training runs
    without secure aggregation.

    Raises:
        FedcloudError: The first problem, by stack key, before any process or file is touched.
    """
    criteria(cfg)
    planned = plan(plan_request(cfg))
    warning = cfg.training.exposure_warning(cfg.stack)
    if warning is not None:
        log.warning(warning)
    return planned


def run_federation(
    cfg: StackConfig,
    participants: Sequence[Participant],
    aggregator: Aggregator,
    transport: Transport,
    *,
    on_dispatched: Callable[[DispatchResult], None] | None = None,
    on_round: Callable[[dict[str, Any]], None] | None = None,
    on_resume: Callable[[str], None] | None = None,
) -> FederationResult:
    """Register the nodes, dispatch one SuperNode per participant, train, pick the best round.

    Args:
        cfg: The stack.
        participants: The federation with each VM inventory and data path as it now stands.
        aggregator: The running SuperLink.
        transport: The SSH transport to the VMs (host keys pinned).
        on_dispatched: Called once with the dispatch results, before training starts.
        on_round: Called with each round's metrics as they arrive.
        on_resume: Called with the reason each time the run resumes after its aggregator's
            loss (the SuperLink restarted by its unit, or its ServerApp died).

    Returns:
        The dispatch results, the training result and the best model (a failed run is a
        result with its status, not an exception).

    Raises:
        TrainingError: The SuperLink could not be reached, a key registered or the run submitted.
    """
    cli = FlwrCli(cfg.state_dir / "flwr-home")
    cli.write_connection(CONNECTION, aggregator.address, aggregator.ca_cert)
    public = {name: pair[1] for name, pair in aggregator.node_keys.items()}
    node_ids = register_nodes(cli, CONNECTION, aggregator.address, public)
    launches = {
        p.name: NodeLaunch(superlink=aggregator.address, ca_cert=aggregator.ca_cert,
                           node_key=aggregator.node_keys[p.name][0],
                           data_dir=p.data_dir or "data")
        for p in participants
    }
    orchestrator = Orchestrator(
        participants, launches, transport=transport,
        nodes=SuperLinkNodes(cli, CONNECTION, {k: v for k, v in node_ids.items() if v is not None}),
        settings=cfg.orchestrator, state_dir=cfg.state_dir)
    dispatched = orchestrator.dispatch()
    if on_dispatched is not None:
        on_dispatched(dispatched)
    protection = protection_output(cfg.training)
    if not dispatched.succeeded:
        return FederationResult(dispatched, None, protection=protection)
    placements = dispatched.placements()
    run_config = cfg.training.run_config(tracking_uri=aggregator.tracking_uri,
                                         experiment=cfg.registry.experiment, stack=cfg.stack)
    try:
        with orchestrator.watcher(placements):
            trained = start_training(
                superlink=aggregator.address, ca_cert=aggregator.ca_cert, node_keys=public,
                run_config=run_config, state_dir=cfg.state_dir, cli=cli, on_round=on_round,
                max_resumes=cfg.training.max_resumes if cfg.training.resume else 0,
                aggregator_wait_s=cfg.training.aggregator_wait_s, on_resume=on_resume)
    except BaseException:
        orchestrator.stop(placements)
        raise
    # The SuperNodes stop (SSH, on the VMs) while the best round is registered (the store).
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="stop") as pool:
        stopped = pool.submit(orchestrator.stop, placements)
        try:
            best = (best_model(cfg, trained, aggregator.store) if trained.status == "COMPLETED"
                    else None)
        finally:
            if (exc := stopped.exception()) is not None:  # waits for the stop
                log.error("stopping the SuperNodes failed: %s", exc)
    return FederationResult(dispatched, trained, best, protection)


def pending_resume(cfg: StackConfig, store: str | None) -> str | None:
    """What the next run will continue, read from a store on this machine (``None``: a new run).

    The ServerApp makes the same choice on the aggregator (``fl/app/resume.py``); this only
    says it before anything starts.

    Raises:
        RegistryError: The store cannot be read.
    """
    from fl.app.errors import AppError
    from fl.app.resume import committed_rounds, newest_run
    from fl.app.store import open_writer

    if store is None or not cfg.training.resume:
        return None
    run_config = cfg.training.run_config(tracking_uri=store, experiment=cfg.registry.experiment,
                                         stack=cfg.stack)
    try:
        run = newest_run(open_writer(store, cfg.registry.experiment), run_config)
    except AppError as exc:
        raise RegistryError(exc.message, exc.fix or "check the store.") from None
    if run is None:
        return None
    done = [n for n, _ in committed_rounds(run)]
    span = "round 1" if done == [1] else f"rounds 1-{done[-1]}" if done else ""
    where = f"{span} committed, going on at round {done[-1] + 1}" if done else \
        "no round committed yet, starting at round 1"
    return (f"resuming run {run.info.run_id} ({run.info.status}; {where} of "
            f"{cfg.training.rounds}); set fedcloud:training.resume: false to start over")


def best_model(cfg: StackConfig, trained: TrainingResult, store: str | None,
               ) -> dict[str, Any] | None:
    """Apply ``fedcloud:bestModel`` to the run's rounds; register and download it if local.

    With the store on this machine the pick is registered with the alias ``best`` and written
    to ``<state>/models``; with a remote store (a cloud aggregator) the same rule picks from
    the rounds the run reported, and ``fedcloud models best`` registers it after the pull.
    """
    rule = criteria(cfg)
    rounds = [r for r in trained.rounds if isinstance(r.get("metrics"), Mapping)]
    if not rounds:
        return None
    out: dict[str, Any] = {"criteria": rule.to_dict(), "storeRunId": trained.store_run_id}
    if store is not None and trained.store_run_id is not None:
        from fl.registry.store import open_store

        registry = open_store(store, cfg.registry.experiment)
        rec = registry.recommend(rule, run_id=trained.store_run_id)
        model, card = registry.download(cfg.state_dir / "models" / "best-model.pt", best=True,
                                        run_id=trained.store_run_id)
        out.update(round=rec.round.server_round, metrics=dict(rec.round.metrics),
                   modelName=rec.model_name, version=rec.version, modelUri=rec.model_uri,
                   file=str(model), card=str(card))
        return out
    try:
        index = choose([r["metrics"] for r in rounds], rule,
                       [f"round {r.get('round')}" for r in rounds])
    except RegistryError:
        return {**out, "round": None, "metrics": None}
    out.update(round=rounds[index].get("round"), metrics=dict(rounds[index]["metrics"]))
    return out


# --- the output schema (stack outputs of both compositions) ---------------------------------

def aggregator_output(*, cloud: Any, region: Any, instance_type: Any, public_ip: Any,
                      superlink_address: Any, ca_cert: Any, ssh_user: Any = None,
                      ssh_host_key_fingerprint: Any = None) -> dict[str, Any]:
    """The ``aggregator`` output (values may be Pulumi Outputs)."""
    return {"cloud": cloud, "region": region, "instanceType": instance_type,
            "publicIp": public_ip, "superlinkAddress": superlink_address, "caCert": ca_cert,
            "sshUser": ssh_user, "sshHostKeyFingerprint": ssh_host_key_fingerprint}


def participants_output(result: DispatchResult, training: TrainingResult | None = None,
                        ) -> dict[str, Any]:
    """``DispatchResult`` -> ``{name: {vm, attempts, status, error, tried, ineligible, ...}}``.

    Added for a participant lost during training: ``events`` (the watcher's lost / rejoined /
    redispatched, with VM and reason), ``vmNow``; with ``training``, ``contributedRounds`` and
    ``lostInRounds``; its ``status`` then reads e.g. ``dispatched, lost in round 2, rejoined in
    round 3``.
    """
    missed = _missed_rounds(training)
    contributed = _contributed_rounds(training)
    out: dict[str, Any] = {}
    for name, r in sorted(result.items()):
        events = result.events_of(name)
        moved = [e.result.vm_id for e in events
                 if e.kind == "redispatched" and e.result is not None and e.result.ok]
        entry: dict[str, Any] = {
            "vm": r.vm_id,
            "attempts": len(r.attempts),
            "status": _participant_status(r.ok, events, missed.get(name, []),
                                          contributed.get(name, [])),
            "error": r.error,
            "tried": [{"vm": a.vm_id, "ok": a.ok, "stage": a.stage, "reason": a.reason}
                      for a in r.attempts],
            "ineligible": dict(sorted(r.ineligible.items())),
            "vmNow": moved[-1] if moved else r.vm_id,
            "events": [{"kind": e.kind, "vm": e.lost_vm, "reason": e.reason, "at": e.at,
                        "movedTo": e.result.vm_id if e.result is not None else None}
                       for e in events],
        }
        if training is not None:
            entry["contributedRounds"] = contributed.get(name, [])
            entry["lostInRounds"] = missed.get(name, [])
        out[name] = entry
    return out


def _participant_status(ok: bool, events: Sequence[Any], missed: list[int],
                        contributed: list[int]) -> str:
    if not ok:
        return "failed"
    parts = ["dispatched"]
    if missed:
        parts.append(f"lost in round {_span(missed)}")
        later = [n for n in contributed if n > missed[0]]
        parts.append(f"rejoined in round {later[0]}" if later else "did not rejoin")
    elif any(e.kind == "lost" for e in events):
        parts.append("lost and rejoined within its round")
    if any(e.kind == "redispatched" for e in events):
        parts.append("re-dispatched")
    return ", ".join(parts)


def _contributed_rounds(tr: TrainingResult | None) -> dict[str, list[int]]:
    """Participant -> the rounds whose aggregate holds its train reply (from the round lines)."""
    out: dict[str, list[int]] = {}
    for rnd in (tr.rounds if tr is not None else []):
        for name in rnd.get("contributors") or []:
            out.setdefault(str(name), []).append(int(rnd["round"]))
    return out


def _missed_rounds(tr: TrainingResult | None) -> dict[str, list[int]]:
    """Participant -> the completed rounds it did not contribute to (only rounds that say)."""
    if tr is None:
        return {}
    everyone = set(tr.node_ids) | set(_contributed_rounds(tr))
    out: dict[str, list[int]] = {}
    for rnd in tr.rounds:
        if "contributors" not in rnd:
            continue
        present = {str(n) for n in rnd["contributors"] or []}
        for name in sorted(everyone - present):
            out.setdefault(name, []).append(int(rnd["round"]))
    return out


def _span(rounds: Sequence[int]) -> str:
    """``[2, 3, 5]`` -> ``"2-3, 5"``."""
    runs: list[list[int]] = []
    for n in sorted(rounds):
        if runs and n == runs[-1][-1] + 1:
            runs[-1].append(n)
        else:
            runs.append([n])
    return ", ".join(f"{r[0]}-{r[-1]}" if len(r) > 1 else str(r[0]) for r in runs)


def training_output(tr: TrainingResult | None, best: Mapping[str, Any] | None = None,
                    ) -> dict[str, Any]:
    """``TrainingResult`` -> ``{runId, status, detail, rounds, bestModel, ...}`` (JSON).

    Added: ``contributors`` (round -> the participants whose train replies were aggregated),
    ``droppedParticipants``, ``missedRounds`` (participant -> rounds without it) and
    ``degraded`` (a run that continued without a participant in some round; the status stays
    Flower's, the detail says who missed which rounds); ``flowerRuns`` (the job's Flower runs),
    ``resumedFrom`` (each resume: the store run, its status then, the round it went on from),
    ``interruptions`` (why each earlier Flower run ended) and ``epsilon`` (the differential
    privacy spent, the last round's ``dp_epsilon``; ``None`` without it).
    """
    if tr is None:
        return {"runId": None, "status": "NOT_STARTED", "detail": "no participant dispatched",
                "flowerStatus": None, "rounds": 0, "bestModel": None, "elapsedS": None,
                "networkBytes": None, "storeRunId": None, "contributors": {},
                "droppedParticipants": [], "missedRounds": {}, "degraded": False,
                "flowerRuns": [], "resumedFrom": [], "interruptions": [], "epsilon": None}
    missed = _missed_rounds(tr)
    detail = tr.detail
    if missed:
        detail += "; degraded: " + "; ".join(
            f"{name} missed round{'s' if len(r) > 1 else ''} {_span(r)}"
            for name, r in sorted(missed.items()))
    return {"runId": str(tr.run_id), "status": tr.status, "detail": detail,
            "flowerStatus": tr.flower_status, "rounds": len(tr.rounds),
            "bestModel": dict(best) if best else None, "elapsedS": tr.elapsed_s,
            "networkBytes": tr.network_bytes, "storeRunId": tr.store_run_id,
            "contributors": {str(r["round"]): list(r["contributors"]) for r in tr.rounds
                             if "contributors" in r},
            "droppedParticipants": sorted(missed), "missedRounds": missed,
            "degraded": bool(missed), "flowerRuns": [str(r) for r in tr.flower_runs],
            "resumedFrom": [{"storeRunId": r.get("store_run_id"), "was": r.get("was"),
                             "fromRound": r.get("from_round"),
                             "corruptRounds": r.get("corrupt_rounds", [])} for r in tr.resumes],
            "interruptions": list(tr.interruptions), "epsilon": _epsilon(tr)}


def _epsilon(tr: TrainingResult) -> float | None:
    """The last round's ``dp_epsilon`` (the ServerApp's account so far), if a finite number."""
    value = tr.rounds[-1].get("dp_epsilon") if tr.rounds else None
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        return None
    return float(value)


def protection_output(training: TrainingSettings) -> dict[str, Any]:
    """The ``protection`` output, from the stack's options alone (known before training).

    ``secureAggregation``, ``privacy`` (``None`` when off), ``aggregatorSees`` and
    ``participantsSee`` (short plain sentences of what each party can see).
    """
    return training.protection_output()


def outputs(aggregator: Mapping[str, Any], planned: Mapping[str, Any],
            fed: FederationResult) -> dict[str, Any]:
    """The stack outputs: ``aggregator``, ``plan``, ``participants``, ``training``, ``protection``.

    ``protection`` is ``None`` for a result built without it.
    """
    return {"aggregator": dict(aggregator), "plan": dict(planned),
            "participants": participants_output(fed.dispatch, fed.training),
            "training": training_output(fed.training, fed.best), "protection": fed.protection}


def raise_on_failure(cfg: StackConfig, fed: FederationResult, where: str) -> None:
    """Raise the one-line error of a run that did not complete (``where``: what to read)."""
    tr = fed.training
    if tr is None:
        fed.dispatch.raise_on_failure()
        raise TrainingError("no participant could be dispatched.", f"see {where}.")
    if tr.status != "COMPLETED":
        raise TrainingError(f"training run {tr.run_id} of stack '{cfg.stack}' ended "
                            f"{tr.status}: {tr.detail}.", f"see {where}.")


# --- the Pulumi program's dispatch resource ---------------------------------------------------

def _stack_from_props(props: Mapping[str, Any]) -> StackConfig:
    return parse(from_mapping(str(props["stack"]), "pulumi config", json.loads(props["config"])))


def run_dispatch(props: Mapping[str, Any]) -> dict[str, Any]:
    """The Pulumi dispatch resource's create: :func:`run_federation` on the cloud aggregator.

    Args:
        props: ``stack``; ``config`` (JSON of the stack's values); ``superlink_address``;
            the certificate outputs ``ca_cert``, ``ca_key``, ``server_cert``, ``server_key``,
            ``node_keys``.

    Returns:
        ``{"participants": {...}, "training": {...}}``.

    Raises:
        FedcloudError: Nobody could be dispatched or the run did not complete, so that the
            next ``pulumi up`` tries again.
    """
    from fl.initializer.material import materialize_certs

    cfg = _stack_from_props(props)
    cert_dir = cfg.state_dir / "certs"
    materialize_certs(cert_dir, props)
    aggregator = Aggregator(
        address=str(props["superlink_address"]), ca_cert=cert_dir / "ca.pem",
        node_keys={p.name: (cert_dir / "nodes" / f"{p.name}.key",
                            cert_dir / "nodes" / f"{p.name}.pub") for p in cfg.participants},
        tracking_uri=AGGREGATOR_REGISTRY_DIR, store=None)
    fed = run_federation(cfg, cfg.participants, aggregator,
                         ParamikoTransport(cfg.orchestrator.host_key_policy))
    raise_on_failure(cfg, fed, "the participants' dispatch results and the SuperLink's "
                     "journal (journalctl -u fedcloud-superlink on the VM); 'pulumi up' runs "
                     "it again")
    return {"participants": participants_output(fed.dispatch, fed.training),
            "training": training_output(fed.training, fed.best)}


def pull_registry(props: Mapping[str, Any]) -> None:
    """The dispatch resource's delete: bring the VM's model store home over SFTP (host key pinned).

    Raises:
        FedcloudError: Connection, transfer or import failed.
    """
    from fl.registry.sync import AGGREGATOR_STORE_DIR, pull_store

    cfg = _stack_from_props(props)
    vm = VmSpec(id="aggregator", host=str(props["public_ip"]),
                port=int(props.get("ssh_port") or 22),
                user=str(props["ssh_user"]), key_path=Path(props["ssh_private_key_path"]),
                host_key_fingerprint=str(props["ssh_host_fingerprint"]), state="Active",
                vcpus=None, memory_gb=None, disk_gb=None)
    with ParamikoTransport("reject").connect(vm) as session:
        sftp = session._client.open_sftp()  # the session's own SSH connection
        try:
            pull_store(sftp, AGGREGATOR_STORE_DIR, cfg.registry.location,
                       cfg.registry.experiment, cfg.state_dir)
        finally:
            sftp.close()
