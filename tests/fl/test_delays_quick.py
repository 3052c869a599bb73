"""The communication-delay study (``benchmarks/delays.py``): its model, its draws, a real run.

The fast tests check the model of a run and the ClientApp's seeded delay draw. The slow test runs
the benchmark's ``main`` on a real deployment (TLS SuperLink with node authentication, three
SuperNodes on 127.0.3.0/24, the CIFAR-10 CNN on synthetic CIFAR-layout data) with one delay and
p in {0, 1}, one round: every client sleeps at p = 1 and none at p = 0, so the p = 1 run must be
about d longer. d is 15 s rather than the quick mode's 3 s because Flower's own polling (every
3 s on the SuperNode and in the ServerApp) and the per-message ``flwr-clientapp`` start-up on 2
shared cores move a run by several seconds: with d = 3 s a tolerance that absorbs that would
accept a delay knob that does nothing.
"""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path
from types import ModuleType

import pytest

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
# Flower's polling granularity (3 s on the node and on the server, for each of the two runs)
# plus process start-up jitter on 2 shared cores.
TOLERANCE_S = 8.0
# A sleep can also cost more than d: the reply then misses more 3-s polls (the SuperNode's pull
# loop, the ServerApp's reply poll); measured +4 to +9 s on the train phase for d = 3 s.
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


@pytest.mark.slow
def test_delay_study_on_a_real_deployment(tmp_path: Path,
                                          capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "out"
    code = delays.main(["--quick", "--delays", str(D_S), "--probs", "0", "1", "--rounds", "1",
                        "--train-images", "100", "--out", str(out)])
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
