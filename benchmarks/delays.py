"""The communication-delay study: total training time vs the probability p and length d of delays.

One TLS + node-auth SuperLink and three SuperNodes on loopback (``127.0.3.0/24``, reused for every
cell) train the study's CIFAR-10 CNN on synthetic data; in cell (d, p) each client sleeps ``d`` s
after training with probability ``p`` (``fl.app.client_app.delay_drawn``). Each cell runs
``--repeats`` times with different seeds; per d an OLS fit of Flower's run time against p gives
the slope with a 95 % t interval, next to the slope the model of a run expects. Prints one JSON
object and writes ``OUT/delays-<mode>.json`` and ``.png``. Model, figures: ``benchmarks/README.md``.

Usage::

    .venv/bin/python benchmarks/delays.py --quick --repeats 1   # d=3, p in {0,.5,1}, 1 round
    .venv/bin/python benchmarks/delays.py --figure docs/delay-study.png   # 3 x 6 cells x 3 repeats
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
from fl.app.exchange import REPLY_POLL_S
from fl.app.runconfig import MODEL_CLASSES, RunConfig
from fl.app.task import build_model, model_bytes
from fl.initializer.training import TrainingResult, start_training
from fl.orchestrator.supernode import SUPEREXEC_TASK_POLL_S

log = logging.getLogger("delays")

# The study's grid (seconds, probabilities) and its repeats.
FULL_DELAYS_S = (3.0, 4.0, 5.0)
FULL_PROBS = (0.0, 0.2, 0.4, 0.6, 0.8, 1.0)
FULL_ROUNDS = 2
FULL_REPEATS = 3
QUICK_DELAYS_S = (3.0,)
QUICK_PROBS = (0.0, 0.5, 1.0)
QUICK_ROUNDS = 1
QUICK_REPEATS = 1
# Repeat r of a cell uses seed + REPEAT_SEED_STEP * r: other draws, same coupling across p.
REPEAT_SEED_STEP = 1000

# This study's loopback addresses (127.0.3.0/24 is reserved for it; ports are picked free).
LINK_HOST = "127.0.3.1"
NODE_HOST_BASE = 11  # participant i listens on 127.0.3.(11 + i)
PARTICIPANTS = ("p1", "p2", "p3")
ONLINE_TIMEOUT_S = 120.0
NODE_MAX_WAIT_S = 120.0
# An exchange never legitimately waits longer than training + the longest delay + polling.
PHASE_TIMEOUT_S = 120.0
NODE_WAIT_S = 60.0
# Bringing the deployment up (data, certificates, SuperLink, nodes online), for the estimate.
FULL_DEPLOY_S = 25.0
# The timings recorded per cell (see benchmarks/README.md); the first is the one fitted.
TIMINGS = ("flower_elapsed_s", "wall_s", "rounds_wall_s")
# Flower's SuperNode sleeps this long when a pull finds no message (fixed in flwr 1.41).
SUPERNODE_IDLE_PULL_S = 3.0


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
                     node_wait_s=NODE_WAIT_S, seed=seed,
                     secure_aggregation=False)  # the case study's test bed: plain FedAvg rounds


def expected_delay_s(rounds: int, delay_s: float, prob: float, clients: int) -> float:
    """Return the expected delay a run accumulates: ``rounds * d * (1 - (1 - p)^clients)``.

    A round is one exchange that ends with its slowest reply, so it is ``d`` longer as soon as
    one client sleeps.
    """
    return rounds * delay_s * (1.0 - (1.0 - prob) ** clients)


def cell_seed(seed: int, delay_s: float) -> int:
    """Return the seed of every cell with delay ``d`` (one seed per d: coupled draws across p)."""
    return seed + round(delay_s)


def repeat_seed(seed: int, repeat: int) -> int:
    """Return the base seed of repeat ``repeat`` (0-based): the repeats draw other delays."""
    return seed + REPEAT_SEED_STEP * repeat


def expected_draws(seed: int, participants: Sequence[str], rounds: int,
                   prob: float) -> list[list[str]]:
    """Return, per round, the participants that must sleep (recomputed with the client's draw)."""
    from fl.app.client_app import delay_drawn  # imports flwr: only once the env is quiet

    return [[p for p in participants if delay_drawn(seed, p, r, prob)]
            for r in range(1, rounds + 1)]


def ols_fit(xs: Sequence[float], ys: Sequence[float]) -> dict[str, Any]:
    """Least-squares line ``y = a + b x``: slope, its standard error and 95 % t interval.

    The interval is ``b +- t(0.975, n - 2) * se``; with fewer than 3 points or one distinct x
    there is no interval (``None``), and ``excludes_zero`` is then ``False``.
    """
    from scipy.stats import t as student_t

    n = len(xs)
    if n != len(ys):
        raise ValueError(f"{n} x values but {len(ys)} y values")
    mx = sum(xs) / n if n else 0.0
    my = sum(ys) / n if n else 0.0
    sxx = sum((x - mx) ** 2 for x in xs)
    if n < 3 or sxx == 0:
        return {"n": n, "slope": None, "intercept": None, "se": None, "ci95": None,
                "excludes_zero": False, "residual_sd": None}
    slope = sum((x - mx) * (y - my) for x, y in zip(xs, ys, strict=True)) / sxx
    intercept = my - slope * mx
    rss = sum((y - intercept - slope * x) ** 2 for x, y in zip(xs, ys, strict=True))
    sd = math.sqrt(rss / (n - 2))
    se = sd / math.sqrt(sxx)
    half = float(student_t.ppf(0.975, n - 2)) * se
    lo, hi = slope - half, slope + half
    return {"n": n, "slope": slope, "intercept": intercept, "se": se, "ci95": [lo, hi],
            "excludes_zero": bool(lo > 0 or hi < 0), "residual_sd": sd}


def _ols_slope(xs: Sequence[float], ys: Sequence[float]) -> float | None:
    mx, my = sum(xs) / len(xs), sum(ys) / len(ys)
    sxx = sum((x - mx) ** 2 for x in xs)
    return sum((x - mx) * (y - my) for x, y in zip(xs, ys, strict=True)) / sxx if sxx else None


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
            **{key: round(float(rnd.get(key, 0.0)), 3) for key in (
                "round_wall_s", "train_phase_s", "max_client_train_s", "max_client_delay_s")},
        })
    final = result.rounds[-1].get("final_evaluate_s") if result.rounds else None
    return {
        "d_s": cfg.delay_s, "p": cfg.delay_prob, "seed": cfg.seed, "run_id": result.run_id,
        "status": result.status,
        "flower_elapsed_s": round(result.elapsed_s, 3),
        "wall_s": round(wall, 3),
        "rounds_wall_s": round(sum(r["round_wall_s"] for r in rounds), 3),
        "final_evaluate_s": None if final is None else round(float(final), 3),
        "drawn_delay_s": sum(r["max_delay_s"] for r in rounds),
        "delayed_clients": sum(1 for r in rounds for v in r["delays_s"].values() if v > 0),
        "rounds": rounds,
    }


def _check_draws(cell: dict[str, Any], names: Sequence[str], rounds: int) -> None:
    want = expected_draws(cell["seed"], names, rounds, cell["p"])
    got = [sorted(n for n, v in r["delays_s"].items() if v > 0) for r in cell["rounds"]]
    if got != want:
        raise TrainingError(
            f"cell d={cell['d_s']:g} p={cell['p']:g} seed {cell['seed']}: clients slept in "
            f"{got}, the seeded draw says {want}.",
            "the ClientApp's delay draw must be fl.app.client_app.delay_drawn.")


def run_study(dep: LocalFederation, *, delays_s: Sequence[float], probs: Sequence[float],
              rounds: int, repeats: int = 1, seed: int = 1,
              warmup: bool = True) -> dict[str, Any]:
    """Run every (d, p) cell ``repeats`` times on one deployment; compare with the model.

    Args:
        dep: The running deployment (reused for every cell).
        delays_s: The delays d (seconds).
        probs: The probabilities p; must include 0 (the baseline T0).
        rounds: Federated rounds per run.
        repeats: Runs per cell; repeat r uses ``cell_seed(repeat_seed(seed, r), d)``.
        seed: Base seed.
        warmup: Run one untimed 1-round run first (the first run on a fresh deployment pays
            one-off costs that would inflate whichever cell comes first).

    Returns:
        ``{"baseline", "cells", "summary"}`` (see benchmarks/README.md).

    Raises:
        ValueError: ``probs`` has no 0, or ``repeats`` < 1.
        TrainingError: A run did not complete, or a client's drawn delay differs from
            ``delay_drawn`` (the draw is not reproducible).
    """
    if 0.0 not in probs:
        raise ValueError("the probabilities must include 0 (the baseline run T0)")
    if repeats < 1:
        raise ValueError(f"--repeats must be at least 1, got {repeats}")
    clients, names = len(dep.nodes), sorted(dep.nodes)
    study_started = time.monotonic()
    warmup_s = None
    if warmup:
        t = time.monotonic()
        run_cell(dep, base_config(1, seed))
        warmup_s = round(time.monotonic() - t, 3)
    # Cells run in a seeded shuffled order: a drift of the machine's load over the study must
    # not masquerade as a trend in p or d.
    order = [(r, d, p) for r in range(repeats) for d in delays_s for p in probs]
    random.Random(seed).shuffle(order)
    cells: list[dict[str, Any]] = []
    for r, d, p in order:
        cfg = replace(base_config(rounds, cell_seed(repeat_seed(seed, r), d)),
                      delay_prob=p, delay_s=d)
        load = os.getloadavg()[0]
        t = time.monotonic()
        cell = run_cell(dep, cfg)
        cell["cell_s"] = round(time.monotonic() - t, 3)
        cell["load_1min_before"] = round(load, 2)
        _check_draws(cell, names, rounds)
        log.info("repeat %d d=%g p=%.1f: %.1f s (drawn delay %.0f s)", r, d, p,
                 cell["flower_elapsed_s"], cell["drawn_delay_s"])
        cell["repeat"], cell["order"] = r, len(cells)
        cells.append(cell)
    cells.sort(key=lambda c: (c["d_s"], c["p"], c["repeat"]))
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
        "summary": summarise(cells, rounds, clients, study_s, warmup_s, repeats),
    }


def timing_fit(cells: Sequence[dict[str, Any]], key: str) -> dict[str, Any]:
    """Compare one timing (``flower_elapsed_s``, ``wall_s`` or ``rounds_wall_s``) with the model.

    Returns its own baseline (mean at p = 0), the mean absolute error against the realised and
    the expected model, and the least-squares slope of the time over the drawn delay (1.0 when
    each second of sleep on the slowest client costs one second of run time).
    """
    base = [c[key] for c in cells if c["p"] == 0.0]
    t0 = sum(base) / len(base)
    slope = _ols_slope([c["drawn_delay_s"] for c in cells], [c[key] for c in cells])
    return {
        "t0_s": round(t0, 3),
        "p0_spread_s": round(max(base) - min(base), 3),
        "mean_abs_error_realised_s": round(
            sum(abs(c[key] - t0 - c["drawn_delay_s"]) for c in cells) / len(cells), 3),
        "mean_abs_error_expected_s": round(
            sum(abs(c[key] - t0 - c["expected_delay_s"]) for c in cells) / len(cells), 3),
        "slope_vs_drawn_delay": None if slope is None else round(slope, 3),
    }


def _r(value: float | None) -> float | None:
    return None if value is None else round(value, 3)


def slope_summary(row: Sequence[dict[str, Any]], rounds: int, clients: int) -> dict[str, Any]:
    """The fit of one d: Flower's run time against p over every repeat, and the model's slope.

    ``expected_slope_s_per_unit_p`` is the OLS slope of the model's expected time over the same
    p values (the model is concave in p, so it is not its derivative); the realised slope is the
    one of T0 + the drawn delays, i.e. what the draws of these repeats predict.
    """
    ps = [c["p"] for c in row]
    fit = ols_fit(ps, [c["flower_elapsed_s"] for c in row])
    d = row[0]["d_s"]
    expected = _ols_slope(ps, [expected_delay_s(rounds, d, p, clients) for p in ps])
    realised = _ols_slope(ps, [c["drawn_delay_s"] for c in row])
    by_p: dict[float, list[float]] = {}
    for c in row:
        by_p.setdefault(c["p"], []).append(c["flower_elapsed_s"])
    return {
        "p": [c["p"] for c in row],
        "repeat": [c.get("repeat", 0) for c in row],
        "measured_s": [c["flower_elapsed_s"] for c in row],
        "drawn_delay_s": [c["drawn_delay_s"] for c in row],
        "mean_by_p": {f"{p:g}": round(sum(v) / len(v), 3) for p, v in sorted(by_p.items())},
        "n": fit["n"],
        "slope_s_per_unit_p": _r(fit["slope"]),
        "se_s_per_unit_p": _r(fit["se"]),
        "ci95": None if fit["ci95"] is None else [round(v, 3) for v in fit["ci95"]],
        "excludes_zero": fit["excludes_zero"],
        "intercept_s": _r(fit["intercept"]),
        "residual_sd_s": _r(fit["residual_sd"]),
        "expected_slope_s_per_unit_p": _r(expected),
        "realised_slope_s_per_unit_p": _r(realised),
        "mean_error_expected_s": round(sum(c["error_expected_s"] for c in row) / len(row), 3),
    }


def summarise(cells: Sequence[dict[str, Any]], rounds: int, clients: int, study_s: float,
              warmup_s: float | None, repeats: int = 1) -> dict[str, Any]:
    """Return the slope fit per d, error statistics and the running time of the full study."""
    real = [abs(c["error_realised_s"]) for c in cells]
    expd = [abs(c["error_expected_s"]) for c in cells]
    per_d = {f"{d:g}": slope_summary([c for c in cells if c["d_s"] == d], rounds, clients)
             for d in sorted({c["d_s"] for c in cells})}
    per_cell = sum(c["cell_s"] for c in cells) / len(cells)
    full_cells = len(FULL_DELAYS_S) * len(FULL_PROBS) * FULL_REPEATS
    # A cell's time scales with its rounds (+ the final evaluation); the delays add on top.
    mean_delay = sum(c["expected_delay_s"] for c in cells) / len(cells)
    per_exchange_s = (per_cell - mean_delay) / (rounds + 1)
    full_delay_s = FULL_REPEATS * sum(expected_delay_s(FULL_ROUNDS, d, p, len(PARTICIPANTS))
                                      for d in FULL_DELAYS_S for p in FULL_PROBS)
    full_estimate = (FULL_DEPLOY_S + (warmup_s or 0.0)
                     + full_cells * (FULL_ROUNDS + 1) * per_exchange_s + full_delay_s)
    return {
        "cells": len(cells),
        "repeats": repeats,
        "all_slopes_exclude_zero": all(v["excludes_zero"] for v in per_d.values()),
        "per_d": per_d,
        "mean_abs_error_realised_s": round(sum(real) / len(real), 3),
        "max_abs_error_realised_s": round(max(real), 3),
        "rmse_realised_s": round(math.sqrt(sum(e * e for e in real) / len(real)), 3),
        "mean_abs_error_expected_s": round(sum(expd) / len(expd), 3),
        "max_abs_error_expected_s": round(max(expd), 3),
        "by_timing": {key: timing_fit(cells, key) for key in TIMINGS},
        "study_s": round(study_s, 1),
        "mean_cell_s": round(per_cell, 1),
        "full_study_estimate_s": round(full_estimate),
    }


def plot(result: dict[str, Any], path: Path) -> Path:
    """Time vs p per d (repeats as points, OLS line, model dashed) and the slopes with 95 % CIs."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    setup, per_d = result["setup"], result["summary"]["per_d"]
    t0, rounds, clients = result["baseline"]["t0_s"], setup["rounds"], setup["clients"]
    fig, (ax, bx) = plt.subplots(1, 2, figsize=(11, 4.5), width_ratios=(2, 1))
    grid = [i / 50 for i in range(51)]
    for i, (d, row) in enumerate(per_d.items()):
        color, shift = f"C{i}", (i - (len(per_d) - 1) / 2) * 0.015
        ax.plot([p + shift for p in row["p"]], row["measured_s"], "o", color=color, alpha=0.7,
                label=f"d = {d} s: runs")
        if row["slope_s_per_unit_p"] is not None:
            a, b = row["intercept_s"], row["slope_s_per_unit_p"]
            ax.plot([0, 1], [a, a + b], "-", color=color, label=f"d = {d} s: OLS fit")
        ax.plot(grid, [t0 + expected_delay_s(rounds, float(d), p, clients) for p in grid], "--",
                color=color, label=f"d = {d} s: model (T0 + expected delay)")
        if row["ci95"] is not None:
            lo, hi = row["ci95"]
            b = row["slope_s_per_unit_p"]
            bx.errorbar([float(d)], [b], yerr=[[b - lo], [hi - b]], fmt="o", color=color,
                        capsize=5, label=f"d = {d} s: measured, 95 % CI")
        bx.plot([float(d)], [row["expected_slope_s_per_unit_p"]], "x", color=color,
                markersize=10, label=f"d = {d} s: model")
    ax.set_xlabel("p (probability that a client sleeps d s after local training)")
    ax.set_ylabel("total training time (s, Flower's run time)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=6, ncol=len(per_d))
    bx.axhline(0, color="black", linewidth=0.8)
    bx.set_xlabel("d (s)")
    bx.set_ylabel("slope of total time over p (s per unit p)")
    bx.set_xticks([float(d) for d in per_d])
    bx.grid(alpha=0.3)
    bx.legend(fontsize=6)
    fig.suptitle(f"Communication delay: {clients} clients, {rounds} round(s), "
                 f"{result['summary'].get('repeats', 1)} repeat(s) per cell, {setup['model']}",
                 fontsize=10)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def write_result(result: dict[str, Any], out: Path, figure: Path | None = None) -> None:
    """Plot (also to ``figure`` if given), then write the JSON file next to the plot; print it."""
    out.mkdir(parents=True, exist_ok=True)
    result["plot"] = str(plot(result, out / f"delays-{result['mode']}.png"))
    if figure is not None:
        result["figure"] = str(plot(result, figure))
    result["json"] = str(out / f"delays-{result['mode']}.json")
    text = json.dumps(result, indent=1)
    Path(result["json"]).write_text(text + "\n", encoding="utf-8")
    print(text)


def resummarise(path: Path, out: Path, figure: Path | None = None) -> int:
    """Recompute the summary and the plot of a saved result (after a change of the analysis)."""
    result = json.loads(path.read_text(encoding="utf-8"))
    old, setup = result["summary"], result["setup"]
    result["summary"] = summarise(result["cells"], setup["rounds"], setup["clients"],
                                  old["study_s"], result["baseline"]["warmup_run_s"],
                                  setup.get("repeats", old.get("repeats", 1)))
    write_result(result, out, figure)
    return 0


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true",
                        help="d=3, p in {0, 0.5, 1}, 1 round, 1 repeat (about 2 minutes)")
    parser.add_argument("--delays", type=float, nargs="+", help="d values (seconds)")
    parser.add_argument("--probs", type=float, nargs="+", help="p values (must include 0)")
    parser.add_argument("--rounds", type=int, help="rounds per run")
    parser.add_argument("--repeats", type=int,
                        help=f"runs per cell, each with other draws (default {FULL_REPEATS}, "
                             f"{QUICK_REPEATS} with --quick)")
    parser.add_argument("--train-images", type=int, default=300, help="per participant")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--warmup", action=argparse.BooleanOptionalAction, default=None,
                        help="one untimed 1-round run first (default: on, off with --quick)")
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parent / "out")
    parser.add_argument("--figure", type=Path,
                        help="also write the plot here (e.g. docs/delay-study.png)")
    parser.add_argument("--keep", action="store_true", help="keep the work directory")
    parser.add_argument("--from-json", type=Path,
                        help="recompute the summary and the plot of a saved result; run nothing")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.from_json is not None:
        return resummarise(args.from_json, args.out, args.figure)
    quiet_flower_here()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s",
                        stream=sys.stderr)
    logging.getLogger("fl").setLevel(logging.WARNING)

    mode = "quick" if args.quick else "full"
    delays = args.delays or (QUICK_DELAYS_S if args.quick else FULL_DELAYS_S)
    probs = args.probs or (QUICK_PROBS if args.quick else FULL_PROBS)
    rounds = args.rounds or (QUICK_ROUNDS if args.quick else FULL_ROUNDS)
    repeats = args.repeats or (QUICK_REPEATS if args.quick else FULL_REPEATS)
    root = Path(tempfile.mkdtemp(prefix="fedcloud-delays-"))
    started = time.monotonic()
    try:
        with deployment(root, train_images=args.train_images) as dep:
            up_s = time.monotonic() - started
            study = run_study(dep, delays_s=delays, probs=probs, rounds=rounds,
                              repeats=repeats, seed=args.seed,
                              warmup=not args.quick if args.warmup is None else args.warmup)
    finally:
        if not args.keep:
            shutil.rmtree(root, ignore_errors=True)
    cfg = base_config(rounds, args.seed)
    result = {
        "mode": mode,
        "setup": {"model": cfg.model, "model_bytes": model_bytes(build_model(cfg.model_spec())),
                  "clients": len(PARTICIPANTS), "rounds": rounds, "repeats": repeats,
                  "local_epochs": 1, "train_images_per_client": args.train_images,
                  "delays_s": list(delays), "probs": list(probs), "seed": args.seed,
                  "repeat_seed_step": REPEAT_SEED_STEP, "tls": True, "node_auth": True,
                  "superlink_host": LINK_HOST, "serverapp_reply_poll_s": REPLY_POLL_S,
                  "superexec_task_poll_s": SUPEREXEC_TASK_POLL_S,
                  "supernode_idle_pull_s": SUPERNODE_IDLE_PULL_S,
                  "load_1min_at_end": round(os.getloadavg()[0], 2)},
        "timing": {"fitted": "flower_elapsed_s",
                   "flower_elapsed_s": "Flower's running-at -> finished-at (flwr ls, 1 s)",
                   "wall_s": "this process's clock around start_training",
                   "rounds_wall_s": "sum of the ServerApp's per-round times (no final eval)"},
        **study,
        "deployment_up_s": round(up_s, 1),
        "total_s": round(time.monotonic() - started, 1),
    }
    write_result(result, args.out, args.figure)
    return 0


if __name__ == "__main__":
    sys.exit(main())
