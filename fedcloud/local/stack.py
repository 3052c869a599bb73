"""The local stack: the whole job on one machine, with no cloud account and no Pulumi engine.

The same parts and the same federation path as the Pulumi program; only the aggregator (a
SuperLink on this machine) and the VMs (real ``sshd``s on 127.0.1.x) come to exist differently.
``up`` and ``down`` hold the state directory's lock; what ``up`` starts is recorded in
``<state>/local.json`` and carries the stack's marker, so :func:`down` stops it all. See
fedcloud/local/README.md.
"""

from __future__ import annotations

import contextlib
import os
import signal
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

from fedcloud import federation
from fedcloud.core.errors import ConfigError, FedcloudError
from fedcloud.core.files import write_json_atomic
from fedcloud.core.participants import Participant, VmSpec
from fedcloud.core.stack import LocalData, StackConfig
from fedcloud.local import history
from fedcloud.local.cleanup import OUTPUTS_FILE, STATE_FILE, DownReport, check_up, stop_all
from fedcloud.local.state import (
    MARKER_ENV,
    StateFileError,
    create_state_dir,
    locked,
    marker_env,
    marker_value,
    read_state,
    stop_marked,
)
from optimizer import PlanResult

__all__ = ["OUTPUTS_FILE", "STATE_FILE", "DownReport", "Interrupted", "Phases", "down", "up"]

SUPERLINK_HOST = "127.0.0.1"
COVID_MODELS = {"covid_cnn": "covid", "cifar_cnn": "cifar"}
TRAINING = "dispatch and training"


class Interrupted(FedcloudError):
    """``up`` was stopped by Ctrl-C or SIGTERM; what it had started is stopped."""

    def __init__(self, message: str, fix: str, exit_code: int) -> None:
        super().__init__(message, fix)
        self.exit_code = exit_code


class _Terminated(BaseException):
    """SIGTERM, raised in the main thread like KeyboardInterrupt for SIGINT."""


class Phases:
    """Times each phase and reports it (a spinner while it runs, a line when it ends).

    Args:
        report: Called with one line of text per event (``rich`` markup allowed).
        status: Context manager factory showing a spinner with a message (``console.status``).
    """

    def __init__(self, report: Callable[[str], None],
                 status: Callable[[str], contextlib.AbstractContextManager[Any]] | None = None,
                 ) -> None:
        self.report = report
        self.status = status
        self.timings: dict[str, float] = {}
        self.current: str | None = None

    @contextlib.contextmanager
    def phase(self, name: str) -> Iterator[None]:
        """Run one phase; its duration lands in :attr:`timings`."""
        start = time.monotonic()
        self.current = name
        spinner = self.status(f"{name} ...") if self.status else contextlib.nullcontext()
        try:
            with spinner:
                yield
        except BaseException:
            self.timings[name] = round(time.monotonic() - start, 2)
            self.report(f"[red]x[/red] {name} failed after {self.timings[name]:.1f} s")
            raise
        self.timings[name] = round(time.monotonic() - start, 2)
        self.report(f"[green]ok[/green] {name} ({self.timings[name]:.1f} s)")


def _vm_requests(participant: Participant) -> list[Any]:
    from fedcloud.local.emulated import VmRequest

    return [VmRequest(vm.id, vm.state, vm.vcpus, vm.memory_gb, vm.disk_gb, host=vm.host)
            for vm in participant.vms]


def _start_vms(state: Path, participants: tuple[Participant, ...],
               record: dict[str, Any]) -> tuple[Participant, ...]:
    """Start every participant's emulated VMs; return participants with the pinned inventory."""
    from fedcloud.local.emulated import EmulatedCloud

    out = []
    for p in participants:
        root = state / "vms" / p.name
        record.setdefault("vmRoots", []).append(str(root))
        write_json_atomic(state / STATE_FILE, record)
        cloud = EmulatedCloud(root, marker_env=marker_env(state))
        try:
            specs = cloud.start(_vm_requests(p))
        except BaseException:
            cloud.stop()
            raise
        out.append(replace(p, vms=keep_pins(p.vms, specs)))
    return tuple(out)


def keep_pins(declared: tuple[VmSpec, ...], started: tuple[VmSpec, ...]) -> tuple[VmSpec, ...]:
    """The started VMs, each with the host-key fingerprint the stack pins for it, if any.

    An emulated VM's key is generated at start; a stack that pins a fingerprint for it gets that
    pin checked like on a real VM (a mismatch refuses the VM and the next one is tried).
    """
    pins = {vm.id: vm.host_key_fingerprint for vm in declared if vm.host_key_fingerprint}
    return tuple(replace(vm, host_key_fingerprint=pins.get(vm.id, vm.host_key_fingerprint))
                 for vm in started)


def _write_data(state: Path, data: LocalData, participants: tuple[Participant, ...],
                model: str, image_size: int) -> tuple[Participant, ...]:
    from fedcloud.local.synth import generate

    dirs = generate(COVID_MODELS[model], state / "data", [p.name for p in participants],
                    data.train_per_participant, data.test_per_participant,
                    image_size=image_size, alpha=data.alpha, seed=data.seed)
    return tuple(replace(p, data_dir=str(dirs[p.name])) for p in participants)


def _report_plan(report: Callable[[str], None], planned: PlanResult) -> None:
    c = planned.choice
    report(f"    optimizer's placement: {c.cloud}:{c.region}/{c.instance_type}, "
           f"{planned.objectives.cost_local:,.0f} {planned.currency}, "
           f"{planned.objectives.latency_ms:.0f} ms largest RTT")


def _start_superlink(cfg: StackConfig, names: list[str], record: dict[str, Any],
                     ) -> tuple[federation.Aggregator, Any]:
    """Start this deployment's SuperLink (a fresh database; node keys, so identities, kept)."""
    from fl.initializer.certs import ensure_deployment_certs
    from fl.initializer.superlink import SupervisedSuperLink, free_port, start_superlink

    state = cfg.state_dir
    for stale in (*(state / "superlink").glob("superlink.db*"),
                  state / "flwr-home" / "nodes.json"):
        stale.unlink(missing_ok=True)
    certs = ensure_deployment_certs(state / "certs", [SUPERLINK_HOST], names)
    port = free_port(SUPERLINK_HOST)

    def started(link: Any) -> None:
        record["superlink"] = {"pid": link.process.pid, "address": link.address}
        write_json_atomic(state / STATE_FILE, record)

    # Kept running like the aggregator's systemd unit keeps it: restarted on the same port and
    # database when it dies, so a run whose aggregator died resumes (fedcloud/local/README.md).
    link = SupervisedSuperLink(
        lambda: start_superlink(state / "superlink", host=SUPERLINK_HOST, port=port,
                                ca_cert=certs.ca.cert, server_cert=certs.server.cert,
                                server_key=certs.server.key, extra_env=marker_env(state)),
        on_restart=started)
    started(link)
    aggregator = federation.Aggregator(
        address=link.address, ca_cert=certs.ca.cert,
        node_keys={n: (k.private_key, k.public_key) for n, k in certs.nodes.items()},
        tracking_uri=cfg.registry.location, store=cfg.registry.location)
    return aggregator, link


def _progress(phases: Phases, report: Callable[[str], None],
              ) -> tuple[Callable[[Any], None], Callable[[dict[str, Any]], None], list[float]]:
    """The federation's callbacks: dispatch results and each round's metrics, as they come."""
    start = time.monotonic()
    train_start: list[float] = []

    def dispatched(result: Any) -> None:
        phases.timings["dispatch (orchestrator: filter, round-robin, retry)"] = round(
            time.monotonic() - start, 2)
        for _name, r in sorted(result.items()):
            report(f"    {r.summary()}")
            for vm_id, why in sorted(r.ineligible.items()):
                report(f"      {vm_id} not eligible: {why}")
        train_start.append(time.monotonic())

    def on_round(rnd: dict[str, Any]) -> None:
        m = rnd.get("metrics") or {}
        report("    round {}: loss {:.3f} accuracy {:.3f} precision {:.3f} recall {:.3f} "
               "F1 {:.3f}".format(rnd.get("round"), *(float(m.get(k, float("nan")))
                                  for k in ("loss", "accuracy", "precision", "recall", "f1"))))

    return dispatched, on_round, train_start


def _aggregator_output(link: Any, aggregator: federation.Aggregator) -> dict[str, Any]:
    return federation.aggregator_output(
        cloud="local", region="loopback", instance_type="this machine",
        public_ip=link.address.rsplit(":", 1)[0], superlink_address=link.address,
        ca_cert=aggregator.ca_cert.read_text(encoding="ascii"))


def _run(cfg: StackConfig, phases: Phases, report: Callable[[str], None],
         partial: dict[str, Any]) -> dict[str, Any]:
    """Start the VMs, the data and the SuperLink, run the federation; return the outputs.

    ``partial`` collects what exists so far (the SuperLink, the aggregator output, the
    federation's result), for the outputs of an attempt that fails or is interrupted.
    """
    from fl.orchestrator.ssh import ParamikoTransport

    state = cfg.state_dir
    record: dict[str, Any] = {"stack": cfg.stack, "startedAt": time.time()}
    write_json_atomic(state / STATE_FILE, record)
    with phases.phase("emulated VMs (sshd per Active VM on 127.0.1.x)"):
        participants = _start_vms(state, cfg.participants, record)
    live = sum(1 for p in participants for vm in p.vms if vm.active)
    report(f"    {live} VMs up across {len(participants)} participants; inactive VMs unreachable")
    with phases.phase("private data (synthetic, per participant)"):
        participants = _write_data(state, cfg.local_data, participants, cfg.training.model,
                                   cfg.training.image_size)
    with phases.phase("SuperLink (TLS, node authentication)"):
        aggregator, link = _start_superlink(cfg, [p.name for p in participants], record)
    partial["link"] = link
    partial["aggregator"] = _aggregator_output(link, aggregator)
    report(f"    SuperLink at {link.address}")
    report(f"{TRAINING} ...")
    phases.current = TRAINING
    dispatched, on_round, train_start = _progress(phases, report)
    try:
        fed = federation.run_federation(
            cfg, participants, aggregator, ParamikoTransport(cfg.orchestrator.host_key_policy),
            on_dispatched=dispatched, on_round=on_round,
            on_resume=lambda why: report(f"    [yellow]aggregator lost[/yellow] ({why}); "
                                         "resuming from the last committed round"))
    finally:
        link.release()  # the SuperLink stays up after `up`, until `fedcloud down`
    partial["fed"] = fed
    if train_start:
        phases.timings["training (Flower)"] = round(time.monotonic() - train_start[0], 2)
    if fed.training is not None:
        for r in fed.training.resumes:
            report(f"    store run {r.get('store_run_id')} resumed at round "
                   f"{r.get('next_round')} (was {r.get('was')})")
        report(f"    run {fed.training.run_id}: {fed.training.status} ({fed.training.detail})")
    federation.raise_on_failure(cfg, fed, f"{state / OUTPUTS_FILE} and the logs under {state}")
    return _partial_outputs(partial, phases)


def _partial_outputs(partial: dict[str, Any], phases: Phases) -> dict[str, Any]:
    if "fed" in partial:
        out = federation.outputs(partial["aggregator"], partial["plan"], partial["fed"])
    else:
        out = {"aggregator": partial.get("aggregator"), "plan": partial["plan"]}
    out["timings"] = dict(phases.timings)
    return out


@contextlib.contextmanager
def _marked(state: Path) -> Iterator[None]:
    """Put the stack's marker in this process's environment: every child inherits it."""
    old = os.environ.get(MARKER_ENV)
    os.environ[MARKER_ENV] = marker_value(state)
    try:
        yield
    finally:
        if old is None:
            os.environ.pop(MARKER_ENV, None)
        else:
            os.environ[MARKER_ENV] = old


@contextlib.contextmanager
def _signals(handler: Any, *signums: signal.Signals) -> Iterator[None]:
    """Set a handler for the block (only the main thread can; elsewhere a no-op)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    old = {s: signal.signal(s, handler) for s in signums}
    try:
        yield
    finally:
        for s, h in old.items():
            signal.signal(s, h)


def _raise_terminated(signum: int, frame: Any) -> None:
    raise _Terminated()


def _write_attempt(cfg: StackConfig, outputs: dict[str, Any], this: dict[str, Any],
                   good: dict[str, Any] | None, report: Callable[[str], None]) -> None:
    path = cfg.state_dir / OUTPUTS_FILE
    try:
        doc = history.record(path, outputs, this, good)
    except OSError as exc:
        report(f"this attempt ({this['status']}) could not be recorded in {path}: "
               f"{exc.strerror}")
        return
    report(history.summary(path, doc))


def _interrupted(cfg: StackConfig, exc: BaseException, phases: Phases,
                 report: Callable[[str], None], partial: dict[str, Any], started: float,
                 good: dict[str, Any] | None) -> Interrupted:
    """Stop what this ``up`` started, record the attempt as INTERRUPTED; return the error."""
    how, code = ("SIGTERM", 143) if isinstance(exc, _Terminated) else ("Ctrl-C (SIGINT)", 130)
    where = phases.current or "start"
    with _signals(signal.SIG_IGN, signal.SIGINT, signal.SIGTERM):
        link = partial.get("link")
        if link is not None:
            with contextlib.suppress(Exception):
                link.stop()
        cleaned = stop_all(cfg)
        this = history.attempt(history.INTERRUPTED, started, f"interrupted by {how}", where)
        _write_attempt(cfg, _partial_outputs(partial, phases), this, good, report)
    report(f"stopped {cleaned.stopped + (link is not None)} process group(s)/VM(s) this `up` "
           "had started")
    return Interrupted(f"`fedcloud up` of stack '{cfg.stack}' was interrupted by {how} during "
                       f"{where}; what it had started is stopped.",
                       f"run `fedcloud up --stack {cfg.stack}` again.", code)


def _attempt(cfg: StackConfig, phases: Phases, report: Callable[[str], None],
             partial: dict[str, Any], good: dict[str, Any] | None) -> dict[str, Any]:
    """Run one attempt under the stack's marker; record it in ``outputs.json`` however it ends."""
    started = time.time()
    try:
        with _marked(cfg.state_dir), _signals(_raise_terminated, signal.SIGTERM):
            outputs = _run(cfg, phases, report, partial)
    except (KeyboardInterrupt, _Terminated) as exc:
        raise _interrupted(cfg, exc, phases, report, partial, started, good) from None
    except BaseException as exc:
        error = str(exc) if isinstance(exc, FedcloudError) else f"{type(exc).__name__}: {exc}"
        this = history.attempt(history.FAILED, started, error, phases.current)
        _write_attempt(cfg, _partial_outputs(partial, phases), this, good, report)
        if isinstance(exc, OSError):  # the filesystem under the state directory
            raise FedcloudError(f"{phases.current} failed: {error}.",
                                f"check {cfg.state_dir} (space, permissions), then run "
                                f"`fedcloud up --stack {cfg.stack}` again.") from None
        raise
    this = history.attempt(history.COMPLETED, started, None, None)
    return history.record(cfg.state_dir / OUTPUTS_FILE, outputs, this, None)


def _report_cleanup(report: Callable[[str], None], done: DownReport, notes: list[str]) -> None:
    if done.stopped:
        report(f"stopped {done.stopped} process(es) left by an earlier `up`"
               + (f" ({done.orphans} found by the stack's marker only)" if done.orphans else ""))
    for note in [*notes, *done.notes]:
        report(f"    note: {note}")


def up(cfg: StackConfig, report: Callable[[str], None] = print,
       status: Callable[[str], contextlib.AbstractContextManager[Any]] | None = None,
       ) -> dict[str, Any]:
    """Run the whole job of a ``target: local`` stack; return its outputs.

    Nothing is touched before the stack is validated; then the state directory's lock is
    held to the end, and ``outputs.json`` records the attempt however it ends.

    Raises:
        StackBusy: Another ``up`` or ``down`` of this stack is running.
        Interrupted: Ctrl-C or SIGTERM; what this ``up`` started is stopped.
        FedcloudError: A phase failed (the message names it and the fix); what was started is
            recorded, so ``fedcloud down`` cleans it.
    """
    from optimizer.result import plan_output

    if cfg.target != "local":
        raise ConfigError(f"{cfg.source}: fedcloud:aggregator.target is '{cfg.target}'; "
                          "`fedcloud up` runs only local stacks.",
                          "use `pulumi up` for cloud stacks, or set target: local.")
    phases = Phases(report, status)
    with phases.phase("plan (NSGA-II placement in the clouds, reported only)"):
        planned = federation.validate(cfg)
    _report_plan(report, planned)
    resuming = federation.pending_resume(cfg, cfg.registry.location)
    if resuming:
        report(f"    {resuming}")
    create_state_dir(cfg.state_dir)
    with locked(cfg.state_dir, "fedcloud up", cfg.stack) as notes:
        check_up(cfg)
        _report_cleanup(report, stop_all(cfg), notes)
        try:
            previous = read_state(cfg.state_dir / OUTPUTS_FILE, "the stack's outputs", "")
        except StateFileError:
            previous = None
        return _attempt(cfg, phases, report, {"plan": plan_output(planned)},
                        history.last_good(previous))


def down(cfg: StackConfig) -> DownReport:
    """Stop everything ever started for a local stack; never stopped by an unreadable file.

    Safe at any time: after a complete, failed, interrupted or crashed ``up``, or twice. What
    it cannot read it skips, sets aside and reports (:attr:`DownReport.notes`).

    Raises:
        StackBusy: An ``up`` or ``down`` of this stack is running.
    """
    state = cfg.state_dir
    if not state.is_dir():  # nothing recorded; orphans of a deleted directory may remain
        return DownReport(orphans=stop_marked(state))
    with locked(state, "fedcloud down", cfg.stack, set_aside_bad=True) as notes:
        done = stop_all(cfg)
    done.notes[:0] = notes
    return done
