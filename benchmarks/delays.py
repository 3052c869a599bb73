"""The communication-delay study: total training time vs the probability and length of delays.

Rerun on fedcloud's own deployment: one SuperLink and three SuperNodes on loopback (TLS,
SuperNode authentication, ``127.0.3.0/24``, started once and reused for every cell), the
study's CIFAR-10 CNN (``cifar_cnn``) on synthetic CIFAR-layout data
(``fedcloud/local/synth.py``), the real FL Initializer. In each cell (d, p) every client, after
local training, sleeps ``d`` seconds with probability ``p`` (the run config's ``delay-s`` /
``delay-prob``; the draw is ``fl.app.client_app.delay_drawn(seed, participant, round, p)``).

What is measured, per cell:

* ``flower_elapsed_s`` (the figure compared and plotted): Flower's own running time of the run,
  ``running-at`` to ``finished-at`` from ``flwr ls --format json``;
* ``wall_s``: this process's clock around ``fl.initializer.training.start_training``
  (adds submission,
  FAB upload and the final status poll);
* ``rounds_wall_s``: the ServerApp's per-round times (train + evaluate phases), summed.

The model of a run: a round ends when its slowest client replies, so a round costs ``d`` more
when at least one of the ``n`` clients sleeps, which happens with probability ``1 - (1 - p)^n``::

    E[T(d, p)] = T0 + rounds * d * (1 - (1 - p)^n)      (predicted_expected_s)
    T(d, p | draws) = T0 + sum over rounds of the round's longest drawn delay
                                                        (predicted_realised_s)

``T0`` is the mean ``flower_elapsed_s`` of the p = 0 cells of the same invocation (same
deployment, same process). The realised delays are reported by the clients themselves (each
reply's ``delay-s``) and checked against ``delay_drawn``. For a fixed ``d`` all cells share one
seed (``seed + d``), so a client delayed at some p is delayed at every larger p (common random
numbers: the realised delay grows monotonically with p); different ``d`` use different draws.

Prints one JSON object (also written to ``OUT/delays-<mode>.json``) and writes a PNG plot
(``OUT/delays-<mode>.png``: time vs p, one colour per d; measured solid, expected dashed)::

    {"mode", "setup", "timing", "baseline", "cells": [{"d_s", "p", "flower_elapsed_s",
     "predicted_expected_s", "predicted_realised_s", "drawn_delay_s", ...}], "summary", ...}

Usage::

    .venv/bin/python benchmarks/delays.py --quick     # d=3, p in {0, .5, 1}, 1 round (~2 min idle)
    .venv/bin/python benchmarks/delays.py             # d in {3,4,5} x p in {0,...,1}, 2 rounds
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import random
import shutil
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from fedcloud.core.errors import TrainingError
from fedcloud.core.flower import quiet_flower_here
from fedcloud.local.localfed import LocalFederation, local_federation
from fedcloud.local.synth import generate
from fl.app.runconfig import MODEL_CLASSES, RunConfig
from fl.app.task import build_model, model_bytes
from fl.initializer.training import TrainingResult, start_training

log = logging.getLogger("delays")

# The study's grid (seconds, probabilities).
FULL_DELAYS_S = (3.0, 4.0, 5.0)
FULL_PROBS = (0.0, 0.2, 0.4, 0.6, 0.8, 1.0)
FULL_ROUNDS = 2
QUICK_DELAYS_S = (3.0,)
QUICK_PROBS = (0.0, 0.5, 1.0)
QUICK_ROUNDS = 1

# This study's loopback addresses (127.0.3.0/24 is reserved for it; ports are picked free).
LINK_HOST = "127.0.3.1"
NODE_HOST_BASE = 11  # participant i listens on 127.0.3.(11 + i)
PARTICIPANTS = ("p1", "p2", "p3")
ONLINE_TIMEOUT_S = 120.0
NODE_MAX_WAIT_S = 120.0
# A phase never legitimately waits longer than training + the longest delay + Flower's polling.
PHASE_TIMEOUT_S = 120.0
NODE_WAIT_S = 60.0
# Bringing the deployment up (data, certificates, SuperLink, nodes online), for the estimate.
FULL_DEPLOY_S = 25.0
# The timings recorded per cell (see the module docstring); the first is the one compared.
TIMINGS = ("flower_elapsed_s", "wall_s", "rounds_wall_s")


@contextmanager
def deployment(root: Path, *, participants: Sequence[str] = PARTICIPANTS,
               train_images: int = 300, test_images: int = 60, data_seed: int = 1,
               torch_threads: int = 1) -> Iterator[LocalFederation]:
    """Start a TLS + node-auth SuperLink and one SuperNode per participant; stop them at exit.

    Args:
        root: Work directory (created).
        participants: Participant names (one SuperNode each).
        train_images: Synthetic CIFAR training images per participant.
        test_images: Synthetic CIFAR test images per participant.
        data_seed: Seed of the synthetic data.
        torch_threads: Threads each ClientApp's torch may use (the nodes share the cores).

    Yields:
        The running deployment, every node online.
    """
    data = generate("cifar", root / "data", participants, train_images, test_images,
                    seed=data_seed)
    hosts = {name: f"127.0.3.{NODE_HOST_BASE + i}" for i, name in enumerate(participants)}
    with local_federation(root, participants, data, link_host=LINK_HOST, node_hosts=hosts,
                          torch_threads=torch_threads, max_wait_time_s=NODE_MAX_WAIT_S,
                          online_timeout_s=ONLINE_TIMEOUT_S) as fed:
        yield fed


def base_config(rounds: int, seed: int = 1) -> RunConfig:
    """Return the run config of the study (no delay yet): the study's CIFAR-10 CNN, FedAvg."""
    return RunConfig(model="cifar_cnn", width=1, image_size=32,
                     num_classes=MODEL_CLASSES["cifar_cnn"], rounds=rounds, local_epochs=1,
                     batch_size=32, learning_rate=0.01, fraction_train=1.0,
                     min_nodes=len(PARTICIPANTS), phase_timeout_s=PHASE_TIMEOUT_S,
                     node_wait_s=NODE_WAIT_S, seed=seed)


def expected_delay_s(rounds: int, delay_s: float, prob: float, clients: int) -> float:
    """Return the expected delay a run accumulates: ``rounds * d * (1 - (1 - p)^clients)``.

    A round waits for its slowest client, so it is ``d`` longer as soon as one client sleeps.
    """
    return rounds * delay_s * (1.0 - (1.0 - prob) ** clients)


def cell_seed(seed: int, delay_s: float) -> int:
    """Return the seed of every cell with delay ``d`` (one seed per d: coupled draws across p)."""
    return seed + round(delay_s)


def expected_draws(seed: int, participants: Sequence[str], rounds: int,
                   prob: float) -> list[list[str]]:
    """Return, per round, the participants that must sleep (recomputed with the client's draw)."""
    from fl.app.client_app import delay_drawn  # imports flwr: only once the env is quiet

    return [[p for p in participants if delay_drawn(seed, p, r, prob)]
            for r in range(1, rounds + 1)]


def run_cell(dep: LocalFederation, cfg: RunConfig) -> dict[str, Any]:
    """Run one training run on the deployment and return its timings and drawn delays.

    Raises:
        TrainingError: The run did not complete, or completed with fewer rounds than asked.
    """
    started = time.monotonic()
    result: TrainingResult = start_training(
        superlink=dep.link.address, ca_cert=dep.certs.ca.cert, node_keys=dep.node_keys,
        run_config=cfg, state_dir=dep.root / "state", cli=dep.cli)
    wall = time.monotonic() - started
    if result.status != "COMPLETED" or len(result.rounds) != cfg.rounds:
        raise TrainingError(
            f"delay-study run {result.run_id} (d={cfg.delay_s:g}, p={cfg.delay_prob:g}) ended "
            f"{result.status} after {len(result.rounds)} of {cfg.rounds} round(s): "
            f"{result.detail}", f"read the logs under {dep.root}.")
    rounds: list[dict[str, Any]] = []
    for rnd in result.rounds:
        delays = {str(c["participant"]): float(c.get("delay_s", 0.0))
                  for c in rnd["per_client"]}
        rounds.append({
            "round": int(rnd["round"]),
            "delays_s": dict(sorted(delays.items())),
            "max_delay_s": max(delays.values(), default=0.0),
            "round_wall_s": round(float(rnd.get("round_wall_s", 0.0)), 3),
            "train_phase_s": round(float(rnd.get("train_phase_s", 0.0)), 3),
            "max_client_train_s": round(float(rnd.get("max_client_train_s", 0.0)), 3),
        })
    return {
        "d_s": cfg.delay_s, "p": cfg.delay_prob, "seed": cfg.seed, "run_id": result.run_id,
        "status": result.status,
        "flower_elapsed_s": round(result.elapsed_s, 3),
        "wall_s": round(wall, 3),
        "rounds_wall_s": round(sum(r["round_wall_s"] for r in rounds), 3),
        "drawn_delay_s": sum(r["max_delay_s"] for r in rounds),
        "delayed_clients": sum(1 for r in rounds for v in r["delays_s"].values() if v > 0),
        "rounds": rounds,
    }


def run_study(dep: LocalFederation, *, delays_s: Sequence[float], probs: Sequence[float],
              rounds: int, seed: int = 1, warmup: bool = True) -> dict[str, Any]:
    """Run every (d, p) cell on one deployment and compare the times with the model.

    Args:
        dep: The running deployment (reused for every cell).
        delays_s: The delays d (seconds).
        probs: The probabilities p; must include 0 (the baseline T0).
        rounds: Federated rounds per run.
        seed: Base seed (cells with delay d use ``cell_seed(seed, d)``).
        warmup: Run one untimed 1-round run first (the first run on a fresh deployment pays
            one-off costs that would inflate whichever cell comes first).

    Returns:
        ``{"baseline", "cells", "summary"}`` (see the module docstring).

    Raises:
        ValueError: ``probs`` has no 0.
        TrainingError: A run did not complete, or a client's drawn delay differs from
            ``delay_drawn`` (the draw is not reproducible).
    """
    if 0.0 not in probs:
        raise ValueError("the probabilities must include 0 (the baseline run T0)")
    clients = len(dep.nodes)
    names = sorted(dep.nodes)
    study_started = time.monotonic()
    warmup_s = None
    if warmup:
        t = time.monotonic()
        run_cell(dep, base_config(1, seed))
        warmup_s = round(time.monotonic() - t, 3)
    # Cells run in a seeded shuffled order: a drift of the machine's load over the study must
    # not masquerade as a trend in p or d.
    order = [(d, p) for d in delays_s for p in probs]
    random.Random(seed).shuffle(order)
    cells: list[dict[str, Any]] = []
    for d, p in order:
        cfg = replace(base_config(rounds, cell_seed(seed, d)), delay_prob=p, delay_s=d)
        load = os.getloadavg()[0]
        t = time.monotonic()
        cell = run_cell(dep, cfg)
        cell["cell_s"] = round(time.monotonic() - t, 3)
        cell["load_1min_before"] = round(load, 2)
        want = expected_draws(cfg.seed, names, rounds, p)
        got = [sorted(n for n, v in r["delays_s"].items() if v > 0) for r in cell["rounds"]]
        if got != want:
            raise TrainingError(
                f"cell d={d:g} p={p:g}: clients slept in {got}, the seeded draw says {want}.",
                "the ClientApp's delay draw must be fl.app.client_app.delay_drawn.")
        log.info("d=%g p=%.1f: %.1f s (drawn delay %.0f s)", d, p,
                 cell["flower_elapsed_s"], cell["drawn_delay_s"])
        cell["order"] = len(cells)
        cells.append(cell)
    cells.sort(key=lambda c: (c["d_s"], c["p"]))
    baseline_runs = [c["flower_elapsed_s"] for c in cells if c["p"] == 0.0]
    t0 = sum(baseline_runs) / len(baseline_runs)
    for c in cells:
        exp = expected_delay_s(rounds, c["d_s"], c["p"], clients)
        c["expected_delay_s"] = round(exp, 3)
        c["predicted_expected_s"] = round(t0 + exp, 3)
        c["predicted_realised_s"] = round(t0 + c["drawn_delay_s"], 3)
        c["error_expected_s"] = round(c["flower_elapsed_s"] - c["predicted_expected_s"], 3)
        c["error_realised_s"] = round(c["flower_elapsed_s"] - c["predicted_realised_s"], 3)
    study_s = time.monotonic() - study_started
    return {
        "baseline": {"t0_s": round(t0, 3), "p0_runs_s": baseline_runs,
                     "p0_spread_s": round(max(baseline_runs) - min(baseline_runs), 3),
                     "warmup_run_s": warmup_s},
        "cells": cells,
        "summary": summarise(cells, rounds, study_s, warmup_s),
    }


def timing_fit(cells: Sequence[dict[str, Any]], key: str) -> dict[str, Any]:
    """Compare one timing (``flower_elapsed_s``, ``wall_s`` or ``rounds_wall_s``) with the model.

    Returns its own baseline (mean at p = 0), the mean absolute error against the realised and
    the expected model, and the least-squares slope of the time over the drawn delay (1.0 when
    each second of sleep on the slowest client costs one second of run time).
    """
    base = [c[key] for c in cells if c["p"] == 0.0]
    t0 = sum(base) / len(base)
    xs = [c["drawn_delay_s"] for c in cells]
    ys = [c[key] for c in cells]
    mx, my = sum(xs) / len(xs), sum(ys) / len(ys)
    sxx = sum((x - mx) ** 2 for x in xs)
    slope = sum((x - mx) * (y - my) for x, y in zip(xs, ys, strict=True)) / sxx if sxx else None
    return {
        "t0_s": round(t0, 3),
        "p0_spread_s": round(max(base) - min(base), 3),
        "mean_abs_error_realised_s": round(
            sum(abs(c[key] - t0 - c["drawn_delay_s"]) for c in cells) / len(cells), 3),
        "mean_abs_error_expected_s": round(
            sum(abs(c[key] - t0 - c["expected_delay_s"]) for c in cells) / len(cells), 3),
        "slope_vs_drawn_delay": None if slope is None else round(slope, 3),
    }


def summarise(cells: Sequence[dict[str, Any]], rounds: int, study_s: float,
              warmup_s: float | None) -> dict[str, Any]:
    """Return error statistics, the rise with p per d, and the running time of the full grid."""
    real = [abs(c["error_realised_s"]) for c in cells]
    expd = [abs(c["error_expected_s"]) for c in cells]
    per_d: dict[str, Any] = {}
    for d in sorted({c["d_s"] for c in cells}):
        row = sorted((c for c in cells if c["d_s"] == d), key=lambda c: c["p"])
        lo, hi = row[0], row[-1]
        per_d[f"{d:g}"] = {
            "p": [c["p"] for c in row],
            "measured_s": [c["flower_elapsed_s"] for c in row],
            "predicted_expected_s": [c["predicted_expected_s"] for c in row],
            "predicted_realised_s": [c["predicted_realised_s"] for c in row],
            # measured rise from the lowest to the highest p vs the model's
            "rise_s": round(hi["flower_elapsed_s"] - lo["flower_elapsed_s"], 3),
            "rise_expected_s": round(hi["expected_delay_s"] - lo["expected_delay_s"], 3),
            "rise_realised_s": round(hi["drawn_delay_s"] - lo["drawn_delay_s"], 3),
            "mean_error_expected_s": round(
                sum(c["error_expected_s"] for c in row) / len(row), 3),
        }
    per_cell = sum(c["cell_s"] for c in cells) / len(cells)
    full_cells = len(FULL_DELAYS_S) * len(FULL_PROBS)
    # A cell's time scales with its rounds; the full grid's expected delays add on top.
    mean_delay = sum(c["expected_delay_s"] for c in cells) / len(cells)
    per_round_s = (per_cell - mean_delay) / rounds
    full_delay_s = sum(expected_delay_s(FULL_ROUNDS, d, p, len(PARTICIPANTS))
                       for d in FULL_DELAYS_S for p in FULL_PROBS)
    full_estimate = (FULL_DEPLOY_S + (warmup_s or 0.0) + full_cells * FULL_ROUNDS * per_round_s
                     + full_delay_s)
    return {
        "cells": len(cells),
        "mean_abs_error_realised_s": round(sum(real) / len(real), 3),
        "max_abs_error_realised_s": round(max(real), 3),
        "rmse_realised_s": round(math.sqrt(sum(e * e for e in real) / len(real)), 3),
        "mean_abs_error_expected_s": round(sum(expd) / len(expd), 3),
        "max_abs_error_expected_s": round(max(expd), 3),
        "per_d": per_d,
        "by_timing": {key: timing_fit(cells, key) for key in TIMINGS},
        "study_s": round(study_s, 1),
        "mean_cell_s": round(per_cell, 1),
        "full_grid_estimate_s": round(full_estimate),
    }


def plot(result: dict[str, Any], path: Path) -> Path:
    """Write total time vs p, one colour per d: measured (solid), expected (dashed)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    for i, (d, row) in enumerate(result["summary"]["per_d"].items()):
        color = f"C{i}"
        ax.plot(row["p"], row["measured_s"], "o-", color=color, label=f"d = {d} s measured")
        grid = [i / 50 for i in range(51)]
        t0, rounds, clients = (result["baseline"]["t0_s"], result["setup"]["rounds"],
                               result["setup"]["clients"])
        ax.plot(grid, [t0 + expected_delay_s(rounds, float(d), p, clients) for p in grid], "--",
                color=color, label=f"d = {d} s expected")
        ax.plot(row["p"], row["predicted_realised_s"], "x", color=color, markersize=8,
                label=f"d = {d} s given the draws")
    setup = result["setup"]
    ax.set_xlabel("p (probability that a client sleeps d s after local training)")
    ax.set_ylabel("total training time (s, Flower's run time)")
    ax.set_title(f"Communication delay: {setup['clients']} clients, {setup['rounds']} round(s), "
                 f"{setup['model']}")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, ncol=len(result["summary"]["per_d"]))
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def write_result(result: dict[str, Any], out: Path) -> None:
    """Plot, then write the JSON file next to the plot and print it."""
    out.mkdir(parents=True, exist_ok=True)
    result["plot"] = str(plot(result, out / f"delays-{result['mode']}.png"))
    result["json"] = str(out / f"delays-{result['mode']}.json")
    text = json.dumps(result, indent=1)
    Path(result["json"]).write_text(text + "\n", encoding="utf-8")
    print(text)


def resummarise(path: Path, out: Path) -> int:
    """Recompute the summary and the plot of a saved result (after a change of the analysis)."""
    result = json.loads(path.read_text(encoding="utf-8"))
    old = result["summary"]
    result["summary"] = summarise(result["cells"], result["setup"]["rounds"], old["study_s"],
                                  result["baseline"]["warmup_run_s"])
    write_result(result, out)
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true",
                        help="d=3, p in {0, 0.5, 1}, 1 round (CI; about 2 minutes)")
    parser.add_argument("--delays", type=float, nargs="+", help="d values (seconds)")
    parser.add_argument("--probs", type=float, nargs="+", help="p values (must include 0)")
    parser.add_argument("--rounds", type=int, help="rounds per run")
    parser.add_argument("--train-images", type=int, default=300, help="per participant")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--warmup", action=argparse.BooleanOptionalAction, default=None,
                        help="one untimed 1-round run first (default: on, off with --quick)")
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parent / "out")
    parser.add_argument("--keep", action="store_true", help="keep the work directory")
    parser.add_argument("--from-json", type=Path,
                        help="recompute the summary and the plot of a saved result; run nothing")
    args = parser.parse_args(argv)
    if args.from_json is not None:
        return resummarise(args.from_json, args.out)
    quiet_flower_here()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s",
                        stream=sys.stderr)
    logging.getLogger("fl").setLevel(logging.WARNING)

    mode = "quick" if args.quick else "full"
    delays = args.delays or (QUICK_DELAYS_S if args.quick else FULL_DELAYS_S)
    probs = args.probs or (QUICK_PROBS if args.quick else FULL_PROBS)
    rounds = args.rounds or (QUICK_ROUNDS if args.quick else FULL_ROUNDS)
    root = Path(tempfile.mkdtemp(prefix="fedcloud-delays-"))
    started = time.monotonic()
    try:
        with deployment(root, train_images=args.train_images) as dep:
            up_s = time.monotonic() - started
            study = run_study(dep, delays_s=delays, probs=probs, rounds=rounds, seed=args.seed,
                              warmup=not args.quick if args.warmup is None else args.warmup)
    finally:
        if not args.keep:
            shutil.rmtree(root, ignore_errors=True)
    cfg = base_config(rounds, args.seed)
    result = {
        "mode": mode,
        "setup": {"model": cfg.model, "model_bytes": model_bytes(build_model(cfg.model_spec())),
                  "clients": len(PARTICIPANTS), "rounds": rounds, "local_epochs": 1,
                  "train_images_per_client": args.train_images, "delays_s": list(delays),
                  "probs": list(probs), "seed": args.seed, "tls": True, "node_auth": True,
                  "superlink_host": LINK_HOST},
        "timing": {"compared": "flower_elapsed_s",
                   "flower_elapsed_s": "Flower's running-at -> finished-at (flwr ls)",
                   "wall_s": "this process's clock around start_training",
                   "rounds_wall_s": "sum of the ServerApp's per-round times"},
        **study,
        "deployment_up_s": round(up_s, 1),
        "total_s": round(time.monotonic() - started, 1),
    }
    write_result(result, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
