"""The local stack: the whole job on one machine, with no cloud account and no Pulumi engine.

The same parts and the same federation path as the Pulumi program; only the aggregator (a
SuperLink on this machine) and the VMs (real ``sshd``s on 127.0.1.x) come to exist differently.
What ``up`` starts is recorded in ``<state>/local.json`` so that :func:`down` stops it.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import time
from collections.abc import Callable, Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

from fedcloud import federation
from fedcloud.core.errors import ConfigError, FedcloudError
from fedcloud.core.files import write_json_atomic
from fedcloud.core.participants import Participant
from fedcloud.core.stack import LocalData, StackConfig
from optimizer import PlanResult

STATE_FILE = "local.json"
OUTPUTS_FILE = "outputs.json"
SUPERLINK_HOST = "127.0.0.1"
STOP_TIMEOUT_S = 10.0
COVID_MODELS = {"covid_cnn": "covid", "cifar_cnn": "cifar"}


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

    @contextlib.contextmanager
    def phase(self, name: str) -> Iterator[None]:
        """Run one phase; its duration lands in :attr:`timings`."""
        start = time.monotonic()
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
        cloud = EmulatedCloud(root)
        try:
            specs = cloud.start(_vm_requests(p))
        except BaseException:
            cloud.stop()
            raise
        out.append(replace(p, vms=specs))
    return tuple(out)


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


def _fresh_state(cfg: StackConfig, report: Callable[[str], None]) -> dict[str, Any]:
    """Stop what an earlier ``up`` left, then open this run's record."""
    stopped = down(cfg)
    if stopped:
        report(f"stopped {stopped} process(es) left by an earlier `up`")
    cfg.state_dir.mkdir(parents=True, exist_ok=True)
    os.chmod(cfg.state_dir, 0o700)
    record: dict[str, Any] = {"stack": cfg.stack, "startedAt": time.time()}
    write_json_atomic(cfg.state_dir / STATE_FILE, record)
    return record


def _start_superlink(cfg: StackConfig, names: list[str], record: dict[str, Any],
                     ) -> tuple[federation.Aggregator, Any]:
    """Start this deployment's SuperLink (a fresh database; node keys, so identities, kept)."""
    from fl.initializer.certs import ensure_deployment_certs
    from fl.initializer.superlink import free_port, start_superlink

    state = cfg.state_dir
    for stale in (*(state / "superlink").glob("superlink.db*"),
                  state / "flwr-home" / "nodes.json"):
        stale.unlink(missing_ok=True)
    certs = ensure_deployment_certs(state / "certs", [SUPERLINK_HOST], names)
    link = start_superlink(state / "superlink", host=SUPERLINK_HOST,
                           port=free_port(SUPERLINK_HOST), ca_cert=certs.ca.cert,
                           server_cert=certs.server.cert, server_key=certs.server.key)
    record["superlink"] = {"pid": link.process.pid, "address": link.address}
    write_json_atomic(state / STATE_FILE, record)
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


def up(cfg: StackConfig, report: Callable[[str], None] = print,
       status: Callable[[str], contextlib.AbstractContextManager[Any]] | None = None,
       ) -> dict[str, Any]:
    """Run the whole job of a ``target: local`` stack; return its outputs.

    Raises:
        FedcloudError: A phase failed (the message names it and the fix); what was started is
            recorded, so ``fedcloud down`` cleans it.
    """
    from fl.orchestrator.ssh import ParamikoTransport
    from optimizer.result import plan_output

    if cfg.target != "local":
        raise ConfigError(f"{cfg.source}: fedcloud:aggregator.target is '{cfg.target}'; "
                          "`fedcloud up` runs only local stacks.",
                          "use `pulumi up` for cloud stacks, or set target: local.")
    phases = Phases(report, status)
    with phases.phase("plan (NSGA-II placement in the clouds, reported only)"):
        planned = federation.validate(cfg)
    _report_plan(report, planned)
    record = _fresh_state(cfg, report)
    state = cfg.state_dir
    with phases.phase("emulated VMs (sshd per Active VM on 127.0.1.x)"):
        participants = _start_vms(state, cfg.participants, record)
    live = sum(1 for p in participants for vm in p.vms if vm.active)
    report(f"    {live} VMs up across {len(participants)} participants; inactive VMs unreachable")
    with phases.phase("private data (synthetic, per participant)"):
        participants = _write_data(state, cfg.local_data, participants, cfg.training.model,
                                   cfg.training.image_size)
    with phases.phase("SuperLink (TLS, node authentication)"):
        aggregator, link = _start_superlink(cfg, [p.name for p in participants], record)
    report(f"    SuperLink at {link.address}")
    report("dispatch and training ...")
    dispatched, on_round, train_start = _progress(phases, report)
    fed = federation.run_federation(cfg, participants, aggregator,
                                    ParamikoTransport(cfg.orchestrator.host_key_policy),
                                    on_dispatched=dispatched, on_round=on_round)
    if train_start:
        phases.timings["training (Flower)"] = round(
            time.monotonic() - train_start[0], 2)
    if fed.training is not None:
        report(f"    run {fed.training.run_id}: {fed.training.status} ({fed.training.detail})")
    host = link.address.rsplit(":", 1)[0]
    outputs = federation.outputs(federation.aggregator_output(
        cloud="local", region="loopback", instance_type="this machine", public_ip=host,
        superlink_address=link.address,
        ca_cert=aggregator.ca_cert.read_text(encoding="ascii")), plan_output(planned), fed)
    outputs["timings"] = dict(phases.timings)
    write_json_atomic(state / OUTPUTS_FILE, outputs)
    federation.raise_on_failure(cfg, fed, f"{state / OUTPUTS_FILE} and the logs under {state}")
    return outputs

def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(
            errors="replace")
    except OSError:
        return ""


def _stop_group(pid: int, marker: str) -> bool:
    """Stop the process group led by ``pid`` if ``pid`` still runs ``marker`` (PID reuse)."""
    if not _pid_alive(pid) or marker not in _cmdline(pid):
        return False
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pid, signal.SIGTERM)
    deadline = time.monotonic() + STOP_TIMEOUT_S
    while time.monotonic() < deadline and _pid_alive(pid):
        with contextlib.suppress(ChildProcessError):
            os.waitpid(pid, os.WNOHANG)
        time.sleep(0.1)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pid, signal.SIGKILL)
    return True


def down(cfg: StackConfig) -> int:
    """Stop everything a local ``up`` recorded; return how many processes/VM sets it stopped.

    Safe to call at any time: after a complete, failed or interrupted ``up``, or twice.
    """
    from fedcloud.local.emulated import EmulatedCloud

    path = cfg.state_dir / STATE_FILE
    if not path.exists():
        return 0
    try:
        record = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise FedcloudError(f"{path} is not valid JSON ({exc.msg}).",
                            f"stop the processes by hand, then delete {path}.") from None
    stopped = 0
    link = record.get("superlink") or {}
    if link.get("pid") and _stop_group(int(link["pid"]), "flower-superlink"):
        stopped += 1
    for root in record.get("vmRoots", []):
        stopped += EmulatedCloud.stop_from_state(Path(root))
    path.unlink()
    return stopped
