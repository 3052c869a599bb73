"""The training run: connect, register the participants' keys, submit the app, follow it.

:func:`start_training` writes the ``flwr`` connection, registers node keys (ids remembered in
``<state>/flwr-home/nodes.json``), stages the FAB, runs it with the run config, collects the
ServerApp's round and status lines, and stops a run that outlives its bound. See fl/README.md,
"FL Initializer".
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from fedcloud.core.errors import TrainingError
from fedcloud.core.files import write_atomic
from fedcloud.core.training import config_args
from fl.app.protocol import SECURE_ATTEMPTS, SECURE_KEY_EXCHANGES
from fl.app.runconfig import RESUME_MARK, ROUND_MARK, STATUS_MARK, RunConfig
from fl.initializer.bundle import stage_app
from fl.initializer.flwr_cli import FlwrCli, RunInfo, RunStream
from fl.initializer.superlink import health_ok

log = logging.getLogger(__name__)

CONNECTION = "fedcloud"
# Slack on top of the ServerApp's own bounds (process start-up, FAB install, torch import).
RUN_SLACK_S = 180.0
STATUS_POLL_S = 2.0
FINAL_STATUS_WAIT_S = 30.0
# A run whose aggregator died: the SuperLink went away, or it failed the ServerApp's heartbeat.
AGGREGATOR_LOST = "AGGREGATOR_LOST"
# What `flwr` prints when the SuperLink's connection drops under a stream (flwr 1.41
# cli/utils.py), and the detail the SuperLink gives a run whose ServerApp stopped heart-beating
# (superlink linkstate, checked against flwr 1.41.0).
CONNECTION_LOST_TEXT = "Connection to the SuperLink is unavailable"
NO_HEARTBEAT_TEXT = "No heartbeat"
HEALTH_POLL_S = 1.0
AGGREGATOR_WAIT_S = 180.0


@dataclass(frozen=True)
class TrainingResult:
    """What one training run produced.

    Attributes:
        run_id: Flower's run id.
        status: ``COMPLETED``, ``NODES_LOST`` (fewer than min-nodes participants),
            ``FAILED`` (see ``detail``), ``TIMED_OUT`` (stopped by the initializer after
            ``timeout_s``) or ``STOPPED`` (stopped from outside).
        detail: Human-readable reason or summary.
        flower_status: Flower's status (``finished:completed`` ...).
        rounds: One dict per completed round: ``round``, ``metrics`` (the five METRICS),
            ``per_client``, ``confusion``, ``max_client_train_s``, ``dropped_nodes`` ...
        store_run_id: The Model Manager's run id (``None`` without a tracking URI).
        node_ids: Participant -> Flower node id (``None`` if registered by an earlier session
            whose id was not recorded).
        elapsed_s: Flower's running time of the run.
        network_bytes: Bytes in + out of the SuperLink for this run (``flwr ls``).
        log_lines: The streamed run log.
        flower_runs: Every Flower run of the job, in order (more than one after a resume).
        resumes: The ServerApp's resume lines (store run, round it went on from, ...).
        interruptions: Why each earlier Flower run ended (the aggregator's loss).
    """

    run_id: int
    status: str
    detail: str
    flower_status: str
    rounds: list[dict[str, Any]]
    store_run_id: str | None
    node_ids: dict[str, int | None]
    elapsed_s: float
    network_bytes: int
    log_lines: list[str] = field(repr=False, default_factory=list)
    flower_runs: tuple[int, ...] = ()
    resumes: tuple[dict[str, Any], ...] = ()
    interruptions: tuple[str, ...] = ()


def parse_marked(lines: list[str], mark: str) -> list[dict[str, Any]]:
    """Return the JSON documents that follow ``mark`` in log lines (malformed ones skipped)."""
    out = []
    for line in lines:
        pos = line.find(mark + " ")
        if pos < 0:
            continue
        try:
            doc = json.loads(line[pos + len(mark) + 1:])
        except json.JSONDecodeError:
            continue
        if isinstance(doc, dict):
            out.append(doc)
    return out


def run_bound_s(cfg: RunConfig) -> float:
    """Longest a run may take before the initializer stops it.

    Each round is one exchange, and the run ends with one evaluation (``fl/app/protocol.py``);
    each waits at most ``node-wait-s`` for nodes and ``phase-timeout-s`` for replies, and may
    be sent again to a participant that came back (the same two waits once more). A secure
    round is four exchanges and may run :data:`SECURE_ATTEMPTS` times, each after a wait for
    nodes. :data:`RUN_SLACK_S` covers start-up.
    """
    once = cfg.node_wait_s + cfg.phase_timeout_s
    if cfg.secure_aggregation:
        per_round = SECURE_ATTEMPTS * (
            cfg.node_wait_s + (1 + SECURE_KEY_EXCHANGES) * cfg.phase_timeout_s)
    else:
        per_round = 2 * once
    return cfg.rounds * per_round + 2 * once + RUN_SLACK_S


def _nodes_file(cli: FlwrCli) -> Path:
    return cli.home / "nodes.json"


def register_nodes(cli: FlwrCli, connection: str, address: str,
                   node_keys: Mapping[str, Path]) -> dict[str, int | None]:
    """Register each participant's public key once; return participant -> node id.

    Raises:
        TrainingError: A key file is missing, the SuperLink refused a key for another reason
            than already knowing it, or it knows a key whose node id was not recorded here.
    """
    path = _nodes_file(cli)
    try:
        known: dict[str, int] = json.loads(path.read_text(encoding="utf-8"))
    except (FileNotFoundError, json.JSONDecodeError):
        known = {}
    out: dict[str, int | None] = {}
    for participant, key_path in node_keys.items():
        key_path = Path(key_path)
        if not key_path.exists():
            raise TrainingError(f"node public key {key_path} of participant '{participant}' "
                                "does not exist.",
                                "generate it with fl.initializer.certs.make_node_key.")
        # Keyed by the key alone: what knows a key is the SuperLink's database, which outlives
        # its address (the local stack's SuperLink restarts on a new port with the same file).
        key_id = key_path.read_text(encoding="ascii").split()[1]
        try:
            out[participant] = cli.register_node(key_path, connection)
        except TrainingError as exc:
            if "already in use" not in str(exc):
                raise
            if key_id not in known:
                raise TrainingError(
                    f"the SuperLink at {address} already knows the node key of "
                    f"'{participant}' ({key_path}), but its node id is not recorded in {path}.",
                    "unregister the node (flwr supernode unregister NODE_ID) or start the "
                    "SuperLink with a fresh --database file.") from None
            out[participant] = known[key_id]
            log.info("node key of %s was already registered (node %s)", participant,
                     out[participant])
        if out[participant] is not None:
            known[key_id] = int(out[participant])  # type: ignore[arg-type]
    cli.home.mkdir(parents=True, exist_ok=True)
    write_atomic(path, json.dumps(known, indent=1).encode(), 0o600)
    return out


def _final_status(rounds: list[dict[str, Any]], marks: list[dict[str, Any]],
                  info: RunInfo | None, timed_out: bool) -> tuple[str, str]:
    if timed_out:
        return "TIMED_OUT", f"stopped by the initializer after {len(rounds)} round(s)"
    if marks:
        return str(marks[-1].get("status", "FAILED")), str(marks[-1].get("detail", ""))
    if info is None:
        return AGGREGATOR_LOST, "the SuperLink went away during the run"
    if info.status == "finished:completed":
        return "COMPLETED", f"{len(rounds)} round(s)"
    if info.status == "finished:stopped":
        return "STOPPED", info.details or "stopped"
    if NO_HEARTBEAT_TEXT in info.details:
        return AGGREGATOR_LOST, f"the ServerApp died ({info.details})"
    return "FAILED", info.details or info.status


def _run_info(cli: FlwrCli, run_id: int) -> RunInfo | None:
    """The run's status, or ``None`` when the SuperLink does not answer."""
    try:
        return cli.run_info(CONNECTION, run_id)
    except TrainingError as exc:
        log.warning("run %s: the SuperLink does not answer (%s)", run_id, exc)
        return None


def _follow_to_end(cli: FlwrCli, stream: RunStream, bound: float,
                   ) -> tuple[RunInfo | None, bool]:
    """Wait for the run to finish within ``bound`` seconds, stopping it past the bound.

    The stream ends with the run; if it broke early the status is polled until the run
    finishes or the bound is reached. A stream that broke because the SuperLink went away, or
    a SuperLink that does not answer, ends the wait at once: the aggregator was lost.

    Returns:
        The run's final status (``None``: the aggregator was lost) and whether it was stopped
        for exceeding the bound.
    """
    deadline = time.monotonic() + bound
    timed_out = not stream.wait(bound)
    info = _run_info(cli, stream.run_id)
    if info is not None and not info.finished and not timed_out and any(
            CONNECTION_LOST_TEXT in line for line in stream.lines[-20:]):
        return None, False
    grace = time.monotonic() + FINAL_STATUS_WAIT_S
    while info is not None and not timed_out and not info.finished:
        if time.monotonic() >= max(deadline, grace):
            timed_out = True
            break
        time.sleep(STATUS_POLL_S)
        info = _run_info(cli, stream.run_id)
    if timed_out:
        log.warning("run %s exceeded %.0f s; stopping it", stream.run_id, bound)
        try:
            cli.stop_run(stream.run_id, CONNECTION)
        except TrainingError as exc:  # it may have finished in the meantime
            log.warning("stopping run %s: %s", stream.run_id, exc)
        finally:
            stream.close()
        info = _run_info(cli, stream.run_id)
    return info, timed_out


def wait_healthy(superlink: str, ca_cert: Path | None, timeout_s: float) -> bool:
    """Wait up to ``timeout_s`` for the SuperLink's ``/health`` (its unit restarting it)."""
    deadline = time.monotonic() + timeout_s
    while not health_ok(superlink, ca_cert):
        if time.monotonic() >= deadline:
            return False
        time.sleep(HEALTH_POLL_S)
    return True


def _merged(attempts: Sequence[TrainingResult]) -> TrainingResult:
    """One result for the Flower runs of one job: each round once (the latest line wins)."""
    last = attempts[-1]
    by_round: dict[int, dict[str, Any]] = {}
    for attempt in attempts:
        for rnd in attempt.rounds:
            by_round[int(rnd["round"])] = rnd
    return replace(
        last, rounds=[by_round[n] for n in sorted(by_round)],
        elapsed_s=sum(a.elapsed_s for a in attempts),
        network_bytes=sum(a.network_bytes for a in attempts),
        log_lines=[line for a in attempts for line in a.log_lines],
        flower_runs=tuple(a.run_id for a in attempts),
        resumes=tuple(doc for a in attempts for doc in a.resumes),
        interruptions=tuple(a.detail for a in attempts[:-1]))


def start_training(
    *,
    superlink: str,
    ca_cert: Path | None,
    node_keys: Mapping[str, Path],
    run_config: RunConfig,
    state_dir: Path,
    insecure: bool = False,
    timeout_s: float | None = None,
    on_round: Callable[[dict[str, Any]], None] | None = None,
    on_line: Callable[[str], None] | None = None,
    cli: FlwrCli | None = None,
    max_resumes: int = 0,
    aggregator_wait_s: float = AGGREGATOR_WAIT_S,
    on_resume: Callable[[str], None] | None = None,
) -> TrainingResult:
    """Connect to the SuperLink, register the node keys, run the app and follow it to the end.

    A run whose aggregator died (status :data:`AGGREGATOR_LOST`) is submitted again, up to
    ``max_resumes`` times, once the SuperLink answers; the ServerApp then goes on from the
    last committed round (``fl/app/resume.py``).

    Args:
        superlink: The SuperLink's ``host:port`` (a SAN of its certificate).
        ca_cert: The deployment CA certificate.
        node_keys: Participant name -> its node's public key file (OpenSSH, ECDSA P-384).
            Empty when node authentication is off (insecure development mode).
        run_config: The run's config (``fedcloud.core.training.TrainingSettings.run_config``).
        state_dir: The stack's state directory (``flwr-home/`` and ``app/`` go there).
        insecure: Development only: plain HTTP (logged).
        timeout_s: Stop the run after this long; default :func:`run_bound_s`.
        on_round: Called with each round's dict as it arrives.
        on_line: Called with every streamed log line.
        cli: The ``flwr`` wrapper (default: one on ``<state_dir>/flwr-home``).
        max_resumes: How many times a run whose aggregator died is resumed.
        aggregator_wait_s: How long to wait for the SuperLink to answer again each time.
        on_resume: Called with the reason before each resume.

    Returns:
        The job's last Flower run, final status, every round once and the summed traffic.

    Raises:
        TrainingError: The connection, a registration or the submission failed (a failed
            *run* is a result with status ``FAILED``/``NODES_LOST``, not an exception).
    """
    state_dir = Path(state_dir)
    cli = cli or FlwrCli(state_dir / "flwr-home")
    cli.write_connection(CONNECTION, superlink, ca_cert, insecure=insecure)
    node_ids = register_nodes(cli, CONNECTION, superlink, node_keys) if node_keys else {}
    app_dir = stage_app(state_dir / "app", run_config)
    bound = timeout_s if timeout_s is not None else run_bound_s(run_config)
    attempts: list[TrainingResult] = []
    while True:
        attempts.append(_one_run(cli, app_dir, run_config, bound, node_ids, on_round, on_line))
        lost = attempts[-1]
        if lost.status != AGGREGATOR_LOST or len(attempts) > max_resumes:
            break
        if not wait_healthy(superlink, None if insecure else ca_cert, aggregator_wait_s):
            attempts[-1] = replace(lost, detail=f"{lost.detail}; the SuperLink at {superlink} "
                                   f"did not answer /health within {aggregator_wait_s:g} s")
            break
        try:  # its ServerApp is gone; the SuperLink would mark it failed after its heartbeat
            cli.stop_run(lost.run_id, CONNECTION)
        except TrainingError as exc:
            log.info("run %s: %s", lost.run_id, exc)
        log.warning("run %s: %s; the SuperLink answers again, resuming (%d of %d)",
                    lost.run_id, lost.detail, len(attempts), max_resumes)
        if on_resume is not None:
            on_resume(lost.detail)
    return _merged(attempts)


def _one_run(cli: FlwrCli, app_dir: Path, run_config: RunConfig, bound: float,
             node_ids: dict[str, int | None],
             on_round: Callable[[dict[str, Any]], None] | None,
             on_line: Callable[[str], None] | None) -> TrainingResult:
    """Submit one Flower run and follow it to its end (or to its aggregator's loss)."""
    rounds: list[dict[str, Any]] = []

    def follow(line: str) -> None:
        if on_line is not None:
            on_line(line)
        if ROUND_MARK in line:
            docs = parse_marked([line], ROUND_MARK)
            rounds.extend(docs)
            if on_round is not None:
                for doc in docs:
                    on_round(doc)

    stream = cli.run(app_dir, CONNECTION, config_args(run_config.to_flower()), on_line=follow)
    log.info("flower run %s submitted; bound %.0f s", stream.run_id, bound)
    info, timed_out = _follow_to_end(cli, stream, bound)
    stream.close()
    lines = list(stream.lines)
    marks = parse_marked(lines, STATUS_MARK)
    status, detail = _final_status(rounds, marks, info, timed_out)
    store_run_id = marks[-1].get("store_run_id") if marks else None
    return TrainingResult(
        run_id=stream.run_id, status=status, detail=detail,
        flower_status=info.status if info is not None else "unreachable",
        rounds=list(rounds), store_run_id=str(store_run_id) if store_run_id else None,
        node_ids=node_ids, elapsed_s=info.elapsed_s if info is not None else 0.0,
        network_bytes=info.inbound_bytes + info.outbound_bytes if info is not None else 0,
        log_lines=lines, flower_runs=(stream.run_id,),
        resumes=tuple(parse_marked(lines, RESUME_MARK)),
    )
