"""Differential privacy for the app: clip each update, add Gaussian noise, account the budget.

The ClientApp clips its update to an L2 norm of C and, with ``client`` placement, adds its share
of the noise; with ``server`` placement the ServerApp adds z*C once to the sum of the clipped
updates. Either way the sum carries noise of std z*C, and the guarantee is per participant
(a participant's whole update is the unit protected). :func:`epsilon` composes the rounds with
Opacus' RDP accountant (sampled Gaussian mechanism); Opacus is imported only there, so the
ClientApp never loads it. Updates are treated as all-float: the ClientApp sends float32 deltas
for every array, so every array counts in the norm and comes back float32.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import numpy as np

from fl.app.wire import State

PLACEMENTS = ("client", "server")


def _check_placement(placement: str) -> None:
    if placement not in PLACEMENTS:
        raise ValueError(f"noise placement '{placement}' is not one of {list(PLACEMENTS)}")


def _check_noise(noise_multiplier: float, clipping_norm: float) -> None:
    if not noise_multiplier >= 0:
        raise ValueError(f"noise multiplier must be >= 0 (got {noise_multiplier}); 0 adds none")
    if not clipping_norm > 0:
        raise ValueError(f"clipping norm must be > 0 (got {clipping_norm}); try 1.0")


def global_norm(state: Mapping[str, np.ndarray]) -> float:
    """The L2 norm of every array of ``state`` flattened into one vector (in float64)."""
    total = 0.0
    for arr in state.values():
        flat = np.asarray(arr, dtype=np.float64).ravel()
        total += float(np.dot(flat, flat))
    return math.sqrt(total)


def clip_update(delta: Mapping[str, np.ndarray], norm: float) -> tuple[State, float]:
    """Scale all arrays jointly so their global L2 norm is at most ``norm``.

    Returns:
        The clipped update (float32 arrays, same keys and order) and its norm before clipping.
        An update already inside the ball comes back unchanged (as float32).

    Raises:
        ValueError: ``norm`` is not > 0, or the update holds NaN or infinite values.
    """
    if not norm > 0:
        raise ValueError(f"clipping norm must be > 0 (got {norm}); try 1.0")
    before = global_norm(delta)
    if not math.isfinite(before):
        raise ValueError("the update holds NaN or infinite values; it cannot be clipped")
    scale = min(1.0, norm / before) if before > 0 else 1.0
    out: State = {}
    for name, arr in delta.items():
        scaled = np.asarray(arr, dtype=np.float64) * scale if scale < 1.0 else arr
        out[name] = np.array(scaled, dtype=np.float32)
    return out, before


def gaussian_noise(shapes: Mapping[str, np.ndarray], std: float, rng: np.random.Generator) -> State:
    """Fresh N(0, std^2) float32 noise shaped like each array of ``shapes`` (drawn in key order)."""
    if not std >= 0:
        raise ValueError(f"noise std must be >= 0 (got {std})")
    return {
        name: rng.standard_normal(np.shape(arr), dtype=np.float32) * np.float32(std)
        for name, arr in shapes.items()
    }


def add_noise(state: Mapping[str, np.ndarray], std: float, rng: np.random.Generator) -> State:
    """``state`` plus N(0, std^2) noise, as float32; ``std`` 0 returns a float32 copy (no draw)."""
    if std == 0:
        return {name: np.array(arr, dtype=np.float32) for name, arr in state.items()}
    noise = gaussian_noise(state, std, rng)
    return {name: (np.asarray(arr, dtype=np.float32) + noise[name]) for name, arr in state.items()}


def client_noise_std(noise_multiplier: float, clipping_norm: float, sampled_nodes: int) -> float:
    """Each sampled participant's noise std, z*C/sqrt(n): the n shares sum to std z*C."""
    _check_noise(noise_multiplier, clipping_norm)
    if sampled_nodes < 1:
        raise ValueError(f"sampled nodes must be >= 1 (got {sampled_nodes})")
    return noise_multiplier * clipping_norm / math.sqrt(sampled_nodes)


def server_noise_std(noise_multiplier: float, clipping_norm: float) -> float:
    """The noise std the ServerApp adds once to the sum of the clipped updates: z*C."""
    _check_noise(noise_multiplier, clipping_norm)
    return noise_multiplier * clipping_norm


def effective_noise_multiplier(
    placement: str, noise_multiplier: float, sampled: int, contributed: int
) -> float:
    """The noise multiplier the round's sum actually carried, for :func:`epsilon`.

    ``server``: z. ``client``: z*sqrt(contributed/sampled), since only the participants that
    replied added their share (fewer contributors, less noise on the sum).
    """
    _check_placement(placement)
    _check_noise(noise_multiplier, 1.0)
    if not 1 <= contributed <= sampled:
        raise ValueError(
            f"contributed nodes must be between 1 and sampled ({sampled}); got {contributed}"
        )
    if placement == "server":
        return noise_multiplier
    return noise_multiplier * math.sqrt(contributed / sampled)


def epsilon(steps: Sequence[tuple[float, float]], delta: float) -> float:
    """Epsilon at ``delta`` after the rounds ``steps``, composed by Opacus' RDP accountant.

    Args:
        steps: One ``(effective noise multiplier, sample rate q)`` per round, q in (0, 1];
            q = 1 (every participant each round) is the plain Gaussian mechanism.
        delta: The target delta, in (0, 1).

    Returns:
        Epsilon; 0.0 for no rounds, ``math.inf`` if any round had no noise.
    """
    if not 0 < delta < 1:
        raise ValueError(f"delta must be in (0, 1) (got {delta}); try 1e-5")
    for z, q in steps:
        if not 0 < q <= 1:
            raise ValueError(f"sample rate must be in (0, 1] (got {q})")
        if not z >= 0:
            raise ValueError(f"noise multiplier must be >= 0 (got {z})")
    if not steps:
        return 0.0
    if any(z == 0 for z, _ in steps):
        return math.inf
    from opacus.accountants import RDPAccountant  # lazy: ~1.6 s on top of torch

    accountant = RDPAccountant()
    for z, q in steps:
        accountant.step(noise_multiplier=float(z), sample_rate=float(q))
    return float(accountant.get_epsilon(delta=delta))


def guarantee(placement: str, epsilon: float, delta: float) -> str:
    """One sentence for the logs: what (epsilon, delta) protects and who adds the noise."""
    _check_placement(placement)
    eps = "inf (no noise: no guarantee)" if math.isinf(epsilon) else f"{epsilon:.3g}"
    who = (
        "the aggregator adds the noise, so it sees the clipped updates in the clear"
        if placement == "server"
        else "each participant adds its share of the noise, so a single update reaching the "
        "aggregator carries only part of it"
    )
    return (
        f"({eps}, {delta:.0e})-DP per participant for the released models of the rounds so "
        f"far; {who}"
    )
