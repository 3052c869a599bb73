"""The app's differential privacy: clipping, Gaussian noise, its placement, the RDP accounting.

Epsilon is checked against two routes that do not go through ``fl.app.privacy``: the closed-form
RDP of the Gaussian mechanism (alpha / 2z^2 per round) converted the way Opacus converts, and
Opacus' own analysis functions; plus the classical analytic Gaussian bound as a sanity check.
"""

from __future__ import annotations

import math
import os
import subprocess
import sys

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from fedcloud.core.config import ROOT
from fl.app.privacy import (
    add_noise,
    client_noise_std,
    clip_update,
    effective_noise_multiplier,
    epsilon,
    gaussian_noise,
    global_norm,
    guarantee,
    server_noise_std,
)

DELTA = 1e-5


def _update(rng: np.random.Generator, scale: float) -> dict[str, np.ndarray]:
    return {
        "conv.weight": (rng.standard_normal((8, 3, 3, 3)) * scale).astype(np.float32),
        "conv.bias": (rng.standard_normal(8) * scale).astype(np.float32),
        "bn.num_batches_tracked": np.array(3, dtype=np.int64),
    }


def _norm64(state: dict[str, np.ndarray]) -> float:
    return math.sqrt(sum(float(np.sum(np.asarray(a, np.float64) ** 2)) for a in state.values()))


def test_clip_scales_all_arrays_jointly_to_the_norm() -> None:
    delta = _update(np.random.default_rng(0), scale=5.0)
    before_expected = _norm64(delta)
    clipped, before = clip_update(delta, 1.5)
    assert before == pytest.approx(before_expected, rel=1e-12) and before > 1.5
    assert _norm64(clipped) <= 1.5 + 1e-6
    assert _norm64(clipped) == pytest.approx(1.5, rel=1e-6)
    factor = 1.5 / before_expected  # one factor for every array: the direction is kept
    for name, arr in delta.items():
        assert clipped[name].dtype == np.float32 and clipped[name].shape == arr.shape
        np.testing.assert_allclose(clipped[name], arr.astype(np.float64) * factor, rtol=1e-6)
    assert list(clipped) == list(delta)


def test_an_update_inside_the_ball_is_unchanged() -> None:
    delta = _update(np.random.default_rng(1), scale=0.01)
    clipped, before = clip_update(delta, 10.0)
    assert before < 10.0
    for name, arr in delta.items():
        assert np.array_equal(clipped[name], arr.astype(np.float32))
        assert clipped[name] is not arr
    zero = {"w": np.zeros(4, np.float32)}
    clipped_zero, before_zero = clip_update(zero, 1.0)
    assert before_zero == 0.0 and not np.any(clipped_zero["w"])


@settings(deadline=None, derandomize=True, database=None, max_examples=60)
@given(arrays(np.float32, st.integers(1, 50),
              elements=st.floats(-1e6, 1e6, width=32, allow_nan=False)),
       st.floats(1e-3, 1e3))
def test_clip_never_exceeds_the_norm(values: np.ndarray, norm: float) -> None:
    clipped, before = clip_update({"a": values, "b": values[::-1].copy()}, norm)
    assert global_norm(clipped) <= norm * (1 + 1e-6)
    assert before == pytest.approx(_norm64({"a": values, "b": values}), rel=1e-9)


def test_clip_refuses_bad_input() -> None:
    with pytest.raises(ValueError, match="clipping norm must be > 0"):
        clip_update({"w": np.ones(2, np.float32)}, 0.0)
    with pytest.raises(ValueError, match="NaN or infinite"):
        clip_update({"w": np.array([1.0, np.nan], np.float32)}, 1.0)


def test_noise_has_the_asked_std_and_is_reproducible() -> None:
    shapes = {"big": np.zeros((1000, 1000), np.float32), "small": np.zeros(3, np.float32)}
    noise = gaussian_noise(shapes, 0.3, np.random.default_rng(7))
    big = noise["big"].astype(np.float64)
    assert noise["big"].dtype == np.float32 and noise["small"].shape == (3,)
    assert abs(big.std() - 0.3) < 0.05 * 0.3 and abs(big.mean()) < 0.01
    again = gaussian_noise(shapes, 0.3, np.random.default_rng(7))
    assert all(np.array_equal(noise[k], again[k]) for k in shapes)
    other = gaussian_noise(shapes, 0.3, np.random.default_rng(8))
    assert not np.array_equal(noise["big"], other["big"])
    with pytest.raises(ValueError, match="noise std must be >= 0"):
        gaussian_noise(shapes, -1.0, np.random.default_rng(0))


def test_add_noise_adds_that_noise_and_std_zero_copies() -> None:
    state: dict[str, np.ndarray] = {"w": np.full((500, 500), 2.0, np.float32),
                                    "n": np.array(4, np.int64)}
    noisy = add_noise(state, 0.5, np.random.default_rng(3))
    expected = gaussian_noise(state, 0.5, np.random.default_rng(3))
    np.testing.assert_allclose(noisy["w"], 2.0 + expected["w"], rtol=1e-6)
    assert noisy["w"].dtype == np.float32 and noisy["n"].dtype == np.float32
    assert abs(float(noisy["w"].astype(np.float64).std()) - 0.5) < 0.05 * 0.5
    copy = add_noise(state, 0.0, np.random.default_rng(3))
    assert np.array_equal(copy["w"], state["w"]) and copy["w"] is not state["w"]
    copy["w"][0, 0] = -1.0
    assert state["w"][0, 0] == 2.0


def test_client_shares_sum_to_the_server_noise() -> None:
    z, c, n = 1.2, 0.8, 5
    share = client_noise_std(z, c, n)
    assert share == pytest.approx(z * c / math.sqrt(n)) and server_noise_std(z, c) == z * c
    rng = np.random.default_rng(11)
    shape = {"w": np.zeros(400_000, np.float32)}
    shares = [gaussian_noise(shape, share, rng)["w"].astype(np.float64) for _ in range(n)]
    assert abs(np.sum(shares, axis=0).std() - server_noise_std(z, c)) < 0.05 * z * c
    # Two of five replied: the sum carried two shares, which the effective multiplier says.
    two = np.sum(shares[:2], axis=0).std()
    assert abs(two - effective_noise_multiplier("client", z, n, 2) * c) < 0.05 * two
    assert effective_noise_multiplier("client", z, n, n) == pytest.approx(z)
    assert effective_noise_multiplier("server", z, n, 2) == z


def test_placement_and_counts_are_checked() -> None:
    with pytest.raises(ValueError, match="noise placement 'edge' is not one of"):
        effective_noise_multiplier("edge", 1.0, 3, 3)
    with pytest.raises(ValueError, match="contributed nodes must be between 1 and sampled"):
        effective_noise_multiplier("client", 1.0, 3, 4)
    with pytest.raises(ValueError, match="sampled nodes must be >= 1"):
        client_noise_std(1.0, 1.0, 0)
    with pytest.raises(ValueError, match="noise multiplier must be >= 0"):
        server_noise_std(-0.1, 1.0)


def _gaussian_epsilon_closed_form(z: float, rounds: int, delta: float) -> float:
    """RDP of the Gaussian mechanism, alpha/(2 z^2) per round, over Opacus' default orders."""
    from opacus.accountants import RDPAccountant

    best = math.inf
    for a in RDPAccountant.DEFAULT_ALPHAS:
        rdp = rounds * a / (2 * z * z)
        best = min(best, rdp - (math.log(delta) + math.log(a)) / (a - 1) + math.log((a - 1) / a))
    return best


@pytest.mark.parametrize(("z", "rounds"), [(1.0, 1), (1.0, 3), (2.5, 10)])
def test_epsilon_with_everyone_each_round_is_the_gaussian_mechanism(z: float, rounds: int) -> None:
    value = epsilon([(z, 1.0)] * rounds, DELTA)
    assert value == pytest.approx(_gaussian_epsilon_closed_form(z, rounds, DELTA), rel=1e-9)


def test_one_gaussian_round_is_within_the_analytic_bound() -> None:
    value = epsilon([(1.0, 1.0)], DELTA)
    bound = math.sqrt(2 * math.log(1.25 / DELTA)) / 1.0  # ~4.84
    assert 3 < value < 6 and 1 < value <= 1.2 * bound


def test_subsampled_rounds_match_opacus_analysis() -> None:
    from opacus.accountants import RDPAccountant
    from opacus.accountants.analysis import rdp as analysis

    steps = [(1.1, 0.01)] * 100 + [(0.8, 0.05)] * 20
    orders = RDPAccountant.DEFAULT_ALPHAS
    rdp = analysis.compute_rdp(q=0.01, noise_multiplier=1.1, steps=100, orders=orders)
    rdp = rdp + analysis.compute_rdp(q=0.05, noise_multiplier=0.8, steps=20, orders=orders)
    expected, _ = analysis.get_privacy_spent(orders=orders, rdp=rdp, delta=DELTA)
    assert epsilon(steps, DELTA) == pytest.approx(float(expected), rel=1e-9)
    assert epsilon(steps[::-1], DELTA) == pytest.approx(float(expected), rel=1e-9)


def test_epsilon_moves_the_right_way() -> None:
    assert epsilon([(2.0, 1.0)] * 3, DELTA) < epsilon([(1.0, 1.0)] * 3, DELTA)
    assert epsilon([(1.0, 1.0)] * 3, DELTA) > epsilon([(1.0, 1.0)] * 2, DELTA)
    assert epsilon([(1.0, 0.3)] * 3, DELTA) < epsilon([(1.0, 1.0)] * 3, DELTA)
    assert epsilon([(1.0, 1.0)] * 3, 1e-3) < epsilon([(1.0, 1.0)] * 3, DELTA)
    assert epsilon([(1.0, 1.0), (0.0, 1.0)], DELTA) == math.inf
    assert epsilon([], DELTA) == 0.0


def test_epsilon_refuses_bad_input() -> None:
    with pytest.raises(ValueError, match="delta must be in"):
        epsilon([(1.0, 1.0)], 0.0)
    with pytest.raises(ValueError, match="sample rate must be in"):
        epsilon([(1.0, 0.0)], DELTA)
    with pytest.raises(ValueError, match="noise multiplier must be >= 0"):
        epsilon([(-1.0, 0.5)], DELTA)


def test_guarantee_sentence_names_the_budget_and_who_adds_noise() -> None:
    server = guarantee("server", 2.3456, DELTA)
    assert server.startswith("(2.35, 1e-05)-DP per participant") and "aggregator adds" in server
    client = guarantee("client", 0.5, DELTA)
    assert "(0.5, 1e-05)-DP" in client and "each participant adds its share" in client
    assert "no guarantee" in guarantee("server", math.inf, DELTA)
    assert "\n" not in server + client


def test_the_clientapp_side_never_imports_opacus() -> None:
    code = (
        "import sys, numpy as np\n"
        "import fl.app.client_app\n"
        "from fl.app import privacy as p\n"
        "c, _ = p.clip_update({'w': np.ones(10, np.float32)}, 1.0)\n"
        "p.add_noise(c, p.client_noise_std(1.0, 1.0, 3), np.random.default_rng(0))\n"
        "assert 'opacus' not in sys.modules, 'opacus imported'\n"
        "p.epsilon([(1.0, 1.0)], 1e-5)\n"
        "assert 'opacus' in sys.modules\n"
    )
    env = {**os.environ, "FLWR_TELEMETRY_ENABLED": "0", "FLWR_DISABLE_UPDATE_CHECK": "1"}
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=120, check=False)
    assert proc.returncode == 0, proc.stderr[-2000:]
