"""The local stack: the whole job on one machine, with no cloud account and no Pulumi engine.

The same parts as the Pulumi program (``__main__.py``), composed without the engine:

====================  =====================================================================
phase                 parts
====================  =====================================================================
plan                  ``optimizer.plan`` (the placement in the clouds, reported, not deployed)
emulated VMs          ``fedcloud.local.emulated.EmulatedCloud``: one real ``sshd`` per Active VM on the
                      VM's own 127.0.1.x address, host keys generated and pinned
private data          ``fedcloud.local.synth.generate``: synthetic images in each participant's data dir
SuperLink             ``fl.initializer.certs`` (CA, server certificate, node keys) and
                      ``fl.initializer.superlink.start_superlink`` (TLS, node authentication, database)
dispatch, training    ``fedcloud.federation.run_federation`` (orchestrator + FL Initializer), exactly
                      what the Pulumi program's dispatch provider runs
model registry        ``fl.registry.store``: the best round registered (alias ``best``), downloaded
====================  =====================================================================

Outputs carry the Pulumi program's stack-output keys (``aggregator``, ``plan``,
``participants``, ``training``) and are written to ``<state>/outputs.json``.

What ``up`` starts (the SuperLink's process group, every VM's ``sshd`` and what runs under it)
is recorded in ``<state>/local.json`` as it starts, so :func:`down` stops it by PID from another
process, also after a failed or interrupted ``up``; ``up`` runs ``down`` first, so it can run
twice in a row.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from fedcloud.core.config import RawConfig
from fedcloud.core.errors import ConfigError, FedcloudError, TrainingError
from fedcloud.core.participants import Participant, parse_participants

STATE_FILE = "local.json"
OUTPUTS_FILE = "outputs.json"
SUPERLINK_HOST = "127.0.0.1"
STOP_TIMEOUT_S = 10.0
COVID_MODELS = {"covid_cnn": "covid", "cifar_cnn": "cifar"}


@dataclass(frozen=True)
class LocalData:
    """``fedcloud:localData``: the synthetic private data of the local stack."""

    train_per_participant: int
    test_per_participant: int
    alpha: float | None
    seed: int


def load_local_data(raw: RawConfig) -> LocalData:
    """Parse ``fedcloud:localData``.

    Raises:
        ConfigError: A value is missing or out of range.
    """
    view = raw.view().sub("localData")
    view.check_keys(["trainPerParticipant", "testPerParticipant", "alpha", "seed"])
    alpha = view.get_float("alpha", minimum=0)
    return LocalData(
        train_per_participant=view.get_int("trainPerParticipant", minimum=3),
        test_per_participant=view.get_int("testPerParticipant", minimum=3),
        alpha=alpha or None,
        seed=view.get_int("seed", minimum=0),
    )


def _write_json(path: Path, doc: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(doc, indent=1, sort_keys=True, default=str) + "\n")
    os.replace(tmp, path)


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
        _write_json(state / STATE_FILE, record)
        cloud = EmulatedCloud(root)
        try:
            specs = cloud.start(_vm_requests(p))
        except BaseException:
            cloud.stop()
            raise
        out.append(replace(p, vms=specs))
    return tuple(out)


def _write_data(state: Path, raw: RawConfig, participants: tuple[Participant, ...],
                model: str, image_size: int) -> tuple[Participant, ...]:
    from fedcloud.local.synth import generate

    data = load_local_data(raw)
    dirs = generate(COVID_MODELS[model], state / "data", [p.name for p in participants],
                    data.train_per_participant, data.test_per_participant,
                    image_size=image_size, alpha=data.alpha, seed=data.seed)
    return tuple(replace(p, data_dir=str(dirs[p.name])) for p in participants)


def _local_aggregator(address: str, ca_cert: Path) -> dict[str, Any]:
    host = address.rsplit(":", 1)[0]
    return {"cloud": "local", "region": "loopback", "instanceType": "this machine",
            "publicIp": host, "superlinkAddress": address,
            "caCert": ca_cert.read_text(encoding="ascii")}


def _best_model(raw: RawConfig, location: str, experiment: str,
                store_run_id: str | None, out_dir: Path) -> dict[str, Any] | None:
    """Register the run's best round (``fedcloud:bestModel``) and download it."""
    from fl.registry.criteria import Criteria
    from fl.registry.store import open_store

    if store_run_id is None:
        return None
    view = raw.view().sub("bestModel")
    view.check_keys(["metric", "min"])
    criteria = Criteria.parse(view.get_str("metric"), [str(x) for x in view.get_list("min")])
    store = open_store(location, experiment)
    rec = store.recommend(criteria, run_id=store_run_id)
    model, card = store.download(out_dir / "best-model.pt", best=True, run_id=store_run_id)
    return {"round": rec.round.server_round, "metrics": dict(rec.round.metrics),
            "criteria": str(criteria), "modelName": rec.model_name, "version": rec.version,
            "storeRunId": store_run_id, "file": str(model), "card": str(card)}


def up(raw: RawConfig, report: Callable[[str], None] = print,
       status: Callable[[str], contextlib.AbstractContextManager[Any]] | None = None,
       ) -> dict[str, Any]:
    """Run the whole job of a ``target: local`` stack; return its outputs.

    Raises:
        FedcloudError: A phase failed (the message names it and the fix); what was started is
            recorded, so ``fedcloud down`` cleans it.
    """
    from fedcloud.core.training import load_training
    from fedcloud.federation import participants_output, run_federation, training_output
    from fl.initializer.certs import ensure_deployment_certs
    from fl.initializer.superlink import free_port, start_superlink
    from fl.orchestrator.orchestrator import load_settings
    from fl.orchestrator.ssh import ParamikoTransport
    from fl.registry.store import stack_store
    from optimizer import PlanRequest, plan
    from optimizer.result import plan_output

    target = raw.view().sub("aggregator").get_str("target")
    if target != "local":
        raise ConfigError(f"{raw.source}: fedcloud:aggregator.target is '{target}'; "
                          "`fedcloud up` runs only local stacks.",
                          "use `pulumi up` for cloud stacks, or set target: local.")
    state = raw.state_dir
    stopped = down(raw)
    if stopped:
        report(f"stopped {stopped} process(es) left by an earlier `up`")
    state.mkdir(parents=True, exist_ok=True)
    os.chmod(state, 0o700)
    training = load_training(raw)
    participants = parse_participants(raw)
    phases = Phases(report, status)
    record: dict[str, Any] = {"stack": raw.stack, "startedAt": time.time()}
    _write_json(state / STATE_FILE, record)

    with phases.phase("plan (NSGA-II placement in the clouds, reported only)"):
        planned = plan(PlanRequest.from_raw(raw))
    c = planned.choice
    report(f"    optimizer's placement: {c.cloud}:{c.region}/{c.instance_type}, "
           f"{planned.objectives.cost_local:,.0f} {planned.currency}, "
           f"{planned.objectives.latency_ms:.0f} ms largest RTT")

    with phases.phase("emulated VMs (sshd per Active VM on 127.0.1.x)"):
        participants = _start_vms(state, participants, record)
    live = sum(1 for p in participants for vm in p.vms if vm.active)
    report(f"    {live} VMs up across {len(participants)} participants; inactive VMs unreachable")

    with phases.phase("private data (synthetic, per participant)"):
        participants = _write_data(state, raw, participants, training.model, training.image_size)

    with phases.phase("SuperLink (TLS, node authentication)"):
        # Each local deployment starts with a fresh SuperLink database (the node keys, and so
        # the participants' identities, are kept; node ids are issued anew).
        for stale in (*(state / "superlink").glob("superlink.db*"),
                      state / "flwr-home" / "nodes.json"):
            stale.unlink(missing_ok=True)
        certs = ensure_deployment_certs(state / "certs", [SUPERLINK_HOST],
                                        [p.name for p in participants])
        link = start_superlink(state / "superlink", host=SUPERLINK_HOST,
                               port=free_port(SUPERLINK_HOST), ca_cert=certs.ca.cert,
                               server_cert=certs.server.cert, server_key=certs.server.key)
        record["superlink"] = {"pid": link.process.pid, "address": link.address}
        _write_json(state / STATE_FILE, record)
    report(f"    SuperLink at {link.address}")

    location, experiment = stack_store(raw)
    run_config = training.run_config(tracking_uri=location, experiment=experiment,
                                     stack=raw.stack)
    dispatch_start = time.monotonic()
    train_start: list[float] = []

    def dispatched(result: Any) -> None:
        phases.timings["dispatch (orchestrator: filter, round-robin, retry)"] = round(
            time.monotonic() - dispatch_start, 2)
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

    report("dispatch and training ...")
    fed = run_federation(
        raw, participants, superlink=link.address, ca_cert=certs.ca.cert,
        node_keys={n: (k.private_key, k.public_key) for n, k in certs.nodes.items()},
        run_config=run_config,
        transport=ParamikoTransport(load_settings(raw).host_key_policy),
        on_dispatched=dispatched, on_round=on_round)
    if train_start:
        phases.timings["training (Flower)"] = round(time.monotonic() - train_start[0], 2)
    tr = fed.training
    if tr is None:
        fed.dispatch.raise_on_failure()
        raise TrainingError("no participant could be dispatched.", "see the results above.")
    report(f"    run {tr.run_id}: {tr.status} ({tr.detail})")

    outputs: dict[str, Any] = {
        "aggregator": _local_aggregator(link.address, certs.ca.cert),
        "plan": plan_output(planned),
        "participants": participants_output(fed.dispatch),
        "training": training_output(tr),
    }
    if tr.status == "COMPLETED":
        with phases.phase("model registry (best round registered and downloaded)"):
            best = _best_model(raw, location, experiment, tr.store_run_id, state / "models")
        if best is not None:
            outputs["training"]["bestModel"] = best
    outputs["timings"] = dict(phases.timings)
    _write_json(state / OUTPUTS_FILE, outputs)
    if tr.status != "COMPLETED":
        raise TrainingError(f"training run {tr.run_id} ended {tr.status}: {tr.detail}.",
                            f"see {state / OUTPUTS_FILE} and the logs under {state}.")
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


def down(raw: RawConfig) -> int:
    """Stop everything a local ``up`` recorded; return how many processes/VM sets it stopped.

    Safe to call at any time: after a complete, failed or interrupted ``up``, or twice.
    """
    from fedcloud.local.emulated import EmulatedCloud

    path = raw.state_dir / STATE_FILE
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
