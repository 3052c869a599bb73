"""The communication-delay study (``benchmarks/delays.py``): its model, its draws, its fit, a run.

The fast tests check the model of a run, the ClientApp's seeded delay draw, the repeat seeds and
the slope fit (a known slope is recovered inside its 95 % interval; a flat series is not
"resolved"). The slow test runs the benchmark's ``main`` on a real deployment (TLS SuperLink with
node authentication, three SuperNodes on 127.0.3.0/24, the CIFAR-10 CNN on synthetic data) with
p in {0, 1}, one round, one repeat: every client sleeps at p = 1 and none at p = 0, so the
p = 1 run must be about d longer. d (15 s) stays well above what Flower's remaining polling (the
SuperNode's 3 s idle pull) and the per-message ``flwr-clientapp`` start-up on 2 shared cores move
a run by, so a delay knob that does nothing fails.
"""

from __future__ import annotations

import importlib.util
import json
import random
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
from scipy import stats

from fl.app.client_app import delay_drawn

ROOT = Path(__file__).resolve().parents[2]


def _load_benchmark() -> ModuleType:
    spec = importlib.util.spec_from_file_location("delays_benchmark",
                                                  ROOT / "benchmarks" / "delays.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses resolve their module by name
    spec.loader.exec_module(module)
    return module


delays = _load_benchmark()

# The in-test variant: one round, every client sleeps D_S at p = 1.
D_S = 15.0
# The SuperNode's 3 s idle pull (each of the two exchanges of each of the two runs picks its
# message up 0-3 s late) plus flwr-clientapp start-up jitter on 2 shared cores.
TOLERANCE_S = 8.0
# A sleep can cost more than d: the sleeper's next pull then lands in a later 3 s slot.
POLL_EXTRA_S = 6.0


@pytest.mark.parametrize(
    ("rounds", "d", "p", "clients", "expected"),
    [
        (1, 3.0, 0.0, 3, 0.0),  # nobody ever sleeps
        (1, 3.0, 1.0, 3, 3.0),  # everybody sleeps: one d per round
        (2, 5.0, 0.5, 3, 8.75),  # 2 x 5 x (1 - 0.5^3)
        (3, 4.0, 0.2, 3, 5.856),  # 3 x 4 x (1 - 0.8^3)
        (3, 4.0, 0.2, 1, 2.4),  # one client: rounds x d x p
    ],
)
def test_expected_delay_waits_for_the_slowest_client(rounds: int, d: float, p: float,
                                                     clients: int, expected: float) -> None:
    assert delays.expected_delay_s(rounds, d, p, clients) == pytest.approx(expected)


def test_delay_draw_is_seeded_per_client_and_round_and_nested_in_p() -> None:
    clients = [f"p{i}" for i in range(30)]
    pairs = [(c, r) for c in clients for r in range(1, 51)]
    drawn = {p: {(c, r) for c, r in pairs if delay_drawn(7, c, r, p)}
             for p in (0.0, 0.2, 0.5, 0.8, 1.0)}
    assert drawn[0.0] == set() and drawn[1.0] == set(pairs)
    # Common random numbers: a pair delayed at p is delayed at every larger p.
    assert drawn[0.2] <= drawn[0.5] <= drawn[0.8]
    for p in (0.2, 0.5, 0.8):
        assert abs(len(drawn[p]) / len(pairs) - p) < 0.04  # 1500 draws: the rate is p
    # Reproducible for a seed, different for another, keyed by client name.
    assert delays.expected_draws(7, clients, 50, 0.5) == delays.expected_draws(7, clients, 50, 0.5)
    assert delays.expected_draws(7, clients, 50, 0.5) != delays.expected_draws(8, clients, 50, 0.5)


def test_study_needs_a_baseline_cell() -> None:
    with pytest.raises(ValueError, match="must include 0"):
        delays.run_study(None, delays_s=[3.0], probs=[0.5, 1.0], rounds=1)


def test_repeats_draw_other_delays_and_keep_the_coupling_in_p() -> None:
    clients = [f"p{i}" for i in range(10)]
    seeds = [delays.cell_seed(delays.repeat_seed(1, r), 3.0) for r in range(3)]
    assert len(set(seeds)) == 3
    draws = [delays.expected_draws(s, clients, 20, 0.5) for s in seeds]
    assert draws[0] != draws[1] != draws[2] != draws[0]
    for s in seeds:  # within a repeat, a client delayed at p is delayed at every larger p
        low, high = (delays.expected_draws(s, clients, 20, p) for p in (0.4, 0.8))
        assert all(set(lo) <= set(hi) for lo, hi in zip(low, high, strict=True))


def test_fit_matches_an_independent_regression() -> None:
    xs, ys = [0.0, 1.0, 2.0, 3.0], [1.0, 3.0, 2.0, 5.0]
    fit = delays.ols_fit(xs, ys)
    ref = stats.linregress(xs, ys)
    assert fit["slope"] == pytest.approx(ref.slope) == pytest.approx(1.1)
    assert fit["intercept"] == pytest.approx(ref.intercept)
    assert fit["se"] == pytest.approx(ref.stderr)
    half = stats.t.ppf(0.975, 2) * ref.stderr  # 4.30 x se: t with n - 2 = 2 dof, not 1.96
    assert fit["ci95"] == pytest.approx([1.1 - half, 1.1 + half])
    assert not fit["excludes_zero"]  # [-1.14, 3.34]


def test_fit_recovers_a_known_slope_inside_its_interval() -> None:
    rng = random.Random(3)
    ps = [p for _ in range(3) for p in (0.0, 0.2, 0.4, 0.6, 0.8, 1.0)]
    ys = [40.0 + 6.0 * p + rng.gauss(0.0, 1.0) for p in ps]
    fit = delays.ols_fit(ps, ys)
    assert fit["n"] == 18
    lo, hi = fit["ci95"]
    assert lo < 6.0 < hi and lo > 0 and fit["excludes_zero"]
    assert abs(fit["slope"] - 6.0) < 3 * fit["se"]
    # Over many such series the 95 % interval covers the true slope about 95 % of the time.
    covered = 0
    for _ in range(400):
        noisy = [40.0 + 6.0 * p + rng.gauss(0.0, 3.0) for p in ps]
        lo, hi = delays.ols_fit(ps, noisy)["ci95"]
        covered += lo <= 6.0 <= hi
    assert 0.91 <= covered / 400 <= 0.99


def test_a_flat_series_is_not_resolved() -> None:
    ps = [p for _ in range(3) for p in (0.0, 0.2, 0.4, 0.6, 0.8, 1.0)]
    wiggle = [1.0, -2.0, 0.5, 0.5, -2.0, 1.0]  # symmetric in p: no trend at all
    ys = [40.0 + r + w for r in (0.0, 3.0, -1.0) for w in wiggle]
    fit = delays.ols_fit(ps, ys)
    assert fit["slope"] == pytest.approx(0.0, abs=1e-9)
    lo, hi = fit["ci95"]
    assert lo < 0 < hi and not fit["excludes_zero"]
    assert delays.ols_fit([0.0, 1.0], [40.0, 50.0])["ci95"] is None  # 2 points: no interval
    assert not delays.ols_fit([0.5] * 4, [1.0, 2.0, 3.0, 4.0])["excludes_zero"]


def _cells(d: float, slope: float, repeats: int = 3) -> list[dict[str, Any]]:
    rng = random.Random(int(d))
    cells: list[dict[str, Any]] = []
    for r in range(repeats):
        for p in (0.0, 0.2, 0.4, 0.6, 0.8, 1.0):
            exp = delays.expected_delay_s(2, d, p, 3)
            t = 40.0 + slope * p + rng.gauss(0.0, 0.5)
            cells.append({"d_s": d, "p": p, "repeat": r, "flower_elapsed_s": t, "wall_s": t + 2,
                          "rounds_wall_s": t - 5, "drawn_delay_s": 2 * d * (p > 0.3),
                          "expected_delay_s": exp, "cell_s": t + 3,
                          "error_expected_s": t - 40.0 - exp,
                          "error_realised_s": t - 40.0 - 2 * d * (p > 0.3)})
    return cells


def test_summary_reports_the_slope_per_d_against_the_model() -> None:
    cells = _cells(3.0, 8.0) + _cells(5.0, 0.0)
    summary = delays.summarise(cells, rounds=2, clients=3, study_s=100.0, warmup_s=None,
                               repeats=3)
    three, five = summary["per_d"]["3"], summary["per_d"]["5"]
    assert three["n"] == five["n"] == 18
    assert three["excludes_zero"] and three["ci95"][0] < 8.0 < three["ci95"][1]
    assert three["slope_s_per_unit_p"] == pytest.approx(8.0, abs=1.5)
    assert five["ci95"][0] < 0 < five["ci95"][1] and not five["excludes_zero"]
    assert not summary["all_slopes_exclude_zero"]
    # The model's slope: OLS of rounds * d * (1 - (1 - p)^3) over the grid (concave: < 2 d / 1).
    ps = [0.0, 0.2, 0.4, 0.6, 0.8, 1.0]
    ref = stats.linregress(ps, [delays.expected_delay_s(2, 3.0, p, 3) for p in ps]).slope
    assert three["expected_slope_s_per_unit_p"] == pytest.approx(ref, abs=1e-3)
    assert 0 < ref < 2 * 3.0
    assert three["realised_slope_s_per_unit_p"] == pytest.approx(
        stats.linregress(ps, [6.0 * (p > 0.3) for p in ps]).slope, abs=1e-3)
    assert three["mean_by_p"]["0"] == pytest.approx(
        sum(c["flower_elapsed_s"] for c in cells[:18] if c["p"] == 0.0) / 3, abs=1e-3)


def test_resummarise_a_saved_result(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    cells = _cells(4.0, 10.0)
    saved = {"mode": "full", "cells": cells, "baseline": {"t0_s": 40.0, "warmup_run_s": None},
             "setup": {"model": "cifar_cnn", "clients": 3, "rounds": 2, "repeats": 3},
             "summary": {"study_s": 500.0}}
    path = tmp_path / "saved.json"
    path.write_text(json.dumps(saved), encoding="utf-8")
    figure = tmp_path / "docs" / "delay-study.png"
    assert delays.main(["--from-json", str(path), "--out", str(tmp_path / "out"),
                        "--figure", str(figure)]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed["summary"]["per_d"]["4"]["excludes_zero"]
    assert printed["summary"]["all_slopes_exclude_zero"]
    for png in (figure, tmp_path / "out" / "delays-full.png"):
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.slow
def test_delay_study_on_a_real_deployment(tmp_path: Path,
                                          capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "out"
    code = delays.main(["--quick", "--delays", str(D_S), "--probs", "0", "1", "--rounds", "1",
                        "--repeats", "1", "--train-images", "100", "--out", str(out)])
    assert code == 0
    printed = json.loads(capsys.readouterr().out)
    written = json.loads((out / "delays-quick.json").read_text(encoding="utf-8"))
    assert printed == written
    assert (out / "delays-quick.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    # JSON shape.
    assert {"mode", "setup", "timing", "baseline", "cells", "summary"} <= set(written)
    assert written["setup"]["model"] == "cifar_cnn"
    assert written["setup"]["tls"] and written["setup"]["node_auth"]
    cells = {c["p"]: c for c in written["cells"]}
    assert sorted(cells) == [0.0, 1.0]
    for cell in cells.values():
        assert cell["status"] == "COMPLETED" and cell["d_s"] == D_S
        assert [r["round"] for r in cell["rounds"]] == [1]
        assert cell["flower_elapsed_s"] > 0 and cell["wall_s"] >= cell["flower_elapsed_s"]
    assert written["summary"]["per_d"][f"{D_S:g}"]["p"] == [0.0, 1.0]

    # The draws the clients reported: nobody at p = 0, every client d at p = 1.
    assert cells[0.0]["rounds"][0]["delays_s"] == {"p1": 0.0, "p2": 0.0, "p3": 0.0}
    assert cells[1.0]["rounds"][0]["delays_s"] == {"p1": D_S, "p2": D_S, "p3": D_S}
    assert cells[1.0]["drawn_delay_s"] == D_S

    # Time rises with p by about rounds x d, and the model of the run predicts it.
    rise = cells[1.0]["flower_elapsed_s"] - cells[0.0]["flower_elapsed_s"]
    assert rise >= D_S - TOLERANCE_S, written["cells"]
    assert cells[1.0]["predicted_expected_s"] == pytest.approx(
        written["baseline"]["t0_s"] + D_S, abs=1e-3)
    assert -TOLERANCE_S <= cells[1.0]["error_realised_s"] <= TOLERANCE_S + POLL_EXTRA_S, \
        written["cells"]
    # The ServerApp's own train phase of the p = 1 run holds the whole sleep.
    assert cells[1.0]["rounds"][0]["train_phase_s"] >= D_S
