"""Kill the aggregator at different moments of a run and measure the resume; print JSON.

Real processes on loopback: a TLS SuperLink with node authentication, restarted on its port and
database when it dies (``SupervisedSuperLink``, as the aggregator's systemd unit does), three
SuperNodes, the FL Initializer with resume on, the Model Manager's MLflow store. One
uninterrupted job warms the caches, a second is the baseline; then each scenario is a fresh
job of the same config and seed with SIGKILLs of the SuperLink and/or the ServerApp at chosen
protocol moments.

Prints ``kills``, ``resumed`` (kills whose job still finished every round), ``rounds_lost``,
``rounds_duplicated`` (rounds committed twice, or a second store run), ``resume_overhead_s``
(median extra wall time per kill against the baseline), the final model against the
uninterrupted one (``max_abs_weight_diff``, accuracy), and ``spot_cost_cut_pct`` (the case
study's spot pick against its on-demand pick, ``optimizer``). Usage:
``python benchmarks/resume.py [--rounds 3] [--out benchmarks/out/resume.json]``.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from fedcloud.core.flower import quiet_flower_here
from fedcloud.local.localfed import LocalFederation, local_federation
from fedcloud.local.synth import generate
from fl.app.runconfig import RunConfig
from fl.initializer.training import TrainingResult, start_training

LINK_HOST = "127.0.6.1"
NAMES = ("hospital-a", "hospital-b", "hospital-c")
NODE_HOSTS = {n: f"127.0.6.{11 + i}" for i, n in enumerate(NAMES)}


@dataclass
class Scenario:
    """A job with kills: ``(trigger, target)`` pairs fired in order, once each.

    A trigger is ``("line", text)`` (a ServerApp log line containing ``text``),
    ``("round", n)`` (round n's line, not replayed) or ``("commit", n)`` (round n's checkpoint
    file appears in the store: the round is being committed). A target is ``superlink``,
    ``serverapp`` or ``both``.
    """

    name: str
    moment: str
    kills: list[tuple[tuple[str, Any], str]]
    fired: list[dict[str, Any]] = field(default_factory=list)


SCENARIOS = [
    Scenario("superlink-at-start", "ServerApp started, sampling its first nodes",
             [(("line", "bytes of parameters"), "superlink")]),
    Scenario("superlink-mid-phase", "round 2's exchange in flight",
             [(("line", "train round 2: sent to"), "superlink")]),
    Scenario("serverapp-mid-phase", "round 2's exchange in flight",
             [(("line", "train round 2: sent to"), "serverapp")]),
    Scenario("serverapp-during-commit", "round 1's checkpoint written, its marker not yet",
             [(("commit", 1), "serverapp")]),
    Scenario("both-in-final-evaluation", "the final evaluation in flight",
             [(("line", "evaluate round"), "both")]),
    Scenario("superlink-twice", "round 1 committed; then again in the resumed run",
             [(("round", 1), "superlink"), (("round", 2), "superlink")]),
]


def _serverapp_pids(address: str) -> list[int]:
    """The live ``flwr-serverapp`` processes of the SuperLink at ``address``."""
    out = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            argv = (proc / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if any(a.endswith(b"flwr-serverapp") for a in argv) and address.encode() in argv:
            out.append(int(proc.name))
    return out


def _kill(fed: LocalFederation, target: str) -> None:
    if target in ("serverapp", "both"):
        for pid in _serverapp_pids(fed.link.address):
            os.kill(pid, signal.SIGKILL)
    if target in ("superlink", "both"):
        fed.link.process.proc.kill()


class Killer:
    """Fires a scenario's kills as their triggers come (log lines, round lines, the store)."""

    def __init__(self, fed: LocalFederation, scenario: Scenario, store: Path, t0: float) -> None:
        self.fed, self.scenario, self.store, self.t0 = fed, scenario, store, t0
        self.pending = list(scenario.kills)
        self.lock = threading.Lock()
        self.done = threading.Event()
        self.watcher = threading.Thread(target=self._watch_store, daemon=True)
        self.watcher.start()

    def _fire(self, why: str) -> None:
        _trigger, target = self.pending.pop(0)
        _kill(self.fed, target)
        self.scenario.fired.append({"at_s": round(time.monotonic() - self.t0, 2),
                                    "target": target, "trigger": why})

    def _next_is(self, kind: str) -> tuple[str, Any] | None:
        return self.pending[0][0] if self.pending and self.pending[0][0][0] == kind else None

    def on_line(self, line: str) -> None:
        """Fire the next kill if it waits for a log line this one contains."""
        with self.lock:
            trig = self._next_is("line")
            if trig is not None and trig[1] in line:
                self._fire(f"line '{trig[1]}'")

    def on_round(self, rnd: dict[str, Any]) -> None:
        """Fire the next kill if it waits for this (newly committed) round."""
        with self.lock:
            trig = self._next_is("round")
            if trig is not None and rnd["round"] == trig[1] and not rnd.get("replayed"):
                self._fire(f"round {trig[1]} committed")

    def _watch_store(self) -> None:
        while not self.done.is_set():
            with self.lock:
                trig = self._next_is("commit")
                if trig is not None and any(self.store.rglob(
                        f"rounds/round-{trig[1]:04d}/model.pt")):
                    marker = _has_marker(self.store, trig[1])
                    self._fire(f"round {trig[1]} checkpoint present, marker "
                               f"{'already written' if marker else 'not yet written'}")
            time.sleep(0.005)


def _has_marker(store: Path, n: int) -> bool:
    import sqlite3

    try:
        with sqlite3.connect(f"file:{store / 'mlflow.db'}?mode=ro", uri=True, timeout=1) as db:
            row = db.execute("SELECT count(*) FROM tags WHERE key = ?",
                             (f"fedcloud.round.{n:04d}",)).fetchone()
    except sqlite3.Error:
        return False
    return bool(row and row[0])


def _job(fed: LocalFederation, root: Path, cfg: RunConfig, scenario: Scenario | None,
         name: str = "baseline") -> tuple[TrainingResult, float, dict[str, Any]]:
    """Run one job (fresh store); return its result, wall time and what the store holds."""
    store = root / f"store-{scenario.name if scenario else name}"
    cfg = replace(cfg, tracking_uri=str(store), experiment="fedcloud-resume")
    t0 = time.monotonic()
    killer = Killer(fed, scenario, store, t0) if scenario else None
    on_line: Callable[[str], None] | None = killer.on_line if killer else None
    on_round: Callable[[dict[str, Any]], None] | None = killer.on_round if killer else None
    try:
        result = start_training(superlink=fed.link.address, ca_cert=fed.certs.ca.cert,
                                node_keys=fed.node_keys, run_config=cfg,
                                state_dir=root / "state", cli=fed.cli, on_line=on_line,
                                on_round=on_round, max_resumes=len(SCENARIOS) + 2)
    finally:
        if killer:
            killer.done.set()
    wall = time.monotonic() - t0
    return result, wall, _store_view(store, cfg.rounds)


def _store_view(store: Path, rounds: int) -> dict[str, Any]:
    import torch

    from fl.registry.store import open_store

    reader = open_store(str(store), "fedcloud-resume")
    runs = reader.runs()
    last = runs[0]
    committed = [r.server_round for r in last.rounds]
    path, _card = reader.download(store.parent / f"{store.name}-final.pt",
                                  server_round=rounds, run_id=last.run_id) \
        if rounds in committed else (None, None)
    state = torch.load(path, weights_only=True) if path else {}
    return {"store_runs": len(runs), "status": last.status, "committed": committed,
            "accuracy": last.rounds[-1].metrics["accuracy"] if last.rounds else None,
            "state": state}


def _count(result: TrainingResult) -> dict[int, int]:
    """Round -> how many times a ServerApp committed it (round lines that are not replays)."""
    out: dict[int, int] = {}
    for line in result.log_lines:
        if "FEDCLOUD_ROUND " in line and '"replayed": true' not in line:
            n = json.loads(line[line.index("FEDCLOUD_ROUND ") + 15:])["round"]
            out[n] = out.get(n, 0) + 1
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--width", type=int, default=8)
    parser.add_argument("--image-size", type=int, default=64)
    parser.add_argument("--only", nargs="*", default=None, help="scenario names")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args(argv)
    quiet_flower_here()
    chosen = [s for s in SCENARIOS if not args.only or s.name in args.only]
    cfg = RunConfig(model="covid_cnn", width=args.width, image_size=args.image_size,
                    num_classes=3, rounds=args.rounds, local_epochs=1, batch_size=8,
                    learning_rate=0.05, fraction_train=1.0, min_nodes=3, phase_timeout_s=120,
                    node_wait_s=120, seed=5)
    root = Path(tempfile.mkdtemp(prefix="fedcloud-resume-"))
    try:
        data = generate("covid", root / "data", NAMES, train_per_participant=40,
                        test_per_participant=12, image_size=args.image_size, seed=7)
        with local_federation(root, NAMES, data, link_host=LINK_HOST, node_hosts=NODE_HOSTS,
                              torch_threads=1, supervised=True) as fed:
            doc = _measure(fed, root, cfg, chosen)
    finally:
        shutil.rmtree(root, ignore_errors=True)
    doc.update(_spot_case_study(doc["resume_overhead_s"]))
    text = json.dumps(doc, indent=2, sort_keys=True)
    print(text)
    if args.out:
        args.out.write_text(text + "\n", encoding="utf-8")
    return 0


def _measure(fed: LocalFederation, root: Path, cfg: RunConfig,
             chosen: list[Scenario]) -> dict[str, Any]:
    # A first job fills what every later one finds ready (the FAB, each node's decoded data);
    # the baseline is the second, so that it pays no more than the scenarios do.
    _job(fed, root, cfg, None, name="warm-up")
    base, base_wall, base_view = _job(fed, root, cfg, None)
    assert base.status == "COMPLETED", base.detail
    rows, overheads = [], []
    for scenario in chosen:
        result, wall, view = _job(fed, root, cfg, scenario)
        counts = _count(result)
        kills = len(scenario.fired)
        lost = [n for n in range(1, cfg.rounds + 1) if n not in view["committed"]]
        dup = sum(c - 1 for c in counts.values() if c > 1) + (view["store_runs"] - 1)
        diff = max((float((view["state"][k] - v).abs().max()) for k, v in
                    base_view["state"].items()), default=None) if view["state"] else None
        ok = result.status == "COMPLETED" and not lost
        if ok and kills:
            overheads.append((wall - base_wall) / kills)
        rows.append({"name": scenario.name, "moment": scenario.moment, "kills": kills,
                     "fired": scenario.fired, "status": result.status,
                     "flower_runs": len(result.flower_runs),
                     "resumed_from": [r.get("from_round") for r in result.resumes],
                     "rounds_lost": lost, "rounds_duplicated": dup,
                     "store_status": view["status"], "wall_s": round(wall, 1),
                     "accuracy": view["accuracy"], "max_abs_weight_diff": diff})
    return {
        "rounds": cfg.rounds, "model": f"{cfg.model} width {cfg.width} at {cfg.image_size} px",
        "baseline_wall_s": round(base_wall, 1), "baseline_accuracy": base_view["accuracy"],
        "kills": sum(r["kills"] for r in rows),
        "resumed": sum(r["kills"] for r in rows
                       if r["status"] == "COMPLETED" and not r["rounds_lost"]),
        "rounds_lost": sum(len(r["rounds_lost"]) for r in rows),
        "rounds_duplicated": sum(r["rounds_duplicated"] for r in rows),
        "resume_overhead_s": round(statistics.median(overheads), 1) if overheads else None,
        "max_abs_weight_diff": max((r["max_abs_weight_diff"] for r in rows
                                    if r["max_abs_weight_diff"] is not None), default=None),
        "max_abs_accuracy_diff": max((abs(r["accuracy"] - base_view["accuracy"]) for r in rows
                                      if r["accuracy"] is not None), default=None),
        "scenarios": rows,
    }


def _spot_case_study(resume_overhead_s: float | None) -> dict[str, Any]:
    """The case study's spot pick against its on-demand pick, at the measured resume overhead."""
    from optimizer import spot_cost_cut

    out = spot_cost_cut("covid19", resume_overhead_s=resume_overhead_s)
    return {"spot_cost_cut_pct": out["spot_cost_cut_pct"], "spot_case_study": out}


if __name__ == "__main__":
    raise SystemExit(main())
