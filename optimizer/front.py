"""The Pareto front and the weighted pick, defined once for both methods.

Both NSGA-II and the exhaustive method end here: they hand over the option indices they have
evaluated, and this module keeps the feasible, non-dominated, distinct points (one option per
point of the objective space, the first in catalogue order), sorted by cost. The weighted pick
then uses pymoo's pseudo-weights on that front, so "same pick" compares like with like.
Objectives: cost, latency and emissions (two-objective arrays work too).
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence

import numpy as np


def pareto_front(objectives: np.ndarray, candidates: np.ndarray) -> np.ndarray:
    """Return the indices of the non-dominated, distinct points among ``candidates``.

    Args:
        objectives: ``[options, k]`` array (cost, latency[, emissions]), all minimised.
        candidates: Option indices to consider (feasible ones; duplicates allowed).

    Returns:
        Option indices sorted by cost, then latency, then emissions; of several options with
        the same objectives, only the one with the lowest index.
    """
    idx = np.unique(np.asarray(candidates, dtype=np.int64))
    if idx.size == 0:
        return idx
    f = objectives[idx]
    # Distinct points, each represented by its lowest option index (idx is sorted).
    _, first = np.unique(f, axis=0, return_index=True)
    idx, f = idx[np.sort(first)], f[np.sort(first)]
    keep = np.ones(len(idx), dtype=bool)
    for k in range(len(idx)):
        if keep[k]:
            dominated = np.all(f[k] <= f, axis=1) & np.any(f[k] < f, axis=1)
            keep &= ~dominated
    idx, f = idx[keep], f[keep]
    order = np.lexsort((idx, *[f[:, j] for j in range(f.shape[1] - 1, -1, -1)]))
    return np.asarray(idx[order], dtype=np.int64)


def normalise(front: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Return the ideal and nadir points of a front (per-objective min and max)."""
    return front.min(axis=0), front.max(axis=0)


def cost_latency_subset(front: np.ndarray) -> np.ndarray:
    """Positions of the points of a 3-objective ``front`` that are on its cost-latency front.

    Of points with equal cost and latency the lowest-emission one is kept (then the first).
    """
    order = np.lexsort((np.arange(len(front)), front[:, 2], front[:, 1], front[:, 0]))
    keep: list[int] = []
    best = np.inf
    for k in order:
        if front[k, 1] < best:
            keep.append(int(k))
            best = front[k, 1]
    return np.array(sorted(keep), dtype=np.int64)


def pick(front: np.ndarray, weights: Sequence[float]) -> int:
    """Return the position in ``front`` that the ``weights`` pick.

    pymoo's :class:`~pymoo.mcdm.pseudo_weights.PseudoWeights`: each point's pseudo-weight for an
    objective is its normalised distance from the worst value of that objective on the front,
    ``(nadir - f) / (nadir - ideal)``, scaled to sum to one; the point whose pseudo-weights are
    closest (L1) to the requested weights (scaled to sum to one) is picked. Normalisation uses
    the front's own ideal and nadir. Ties go to the first (cheapest) point. Two weights
    (cost, latency) pick among the front's cost-latency trade-off only
    (:func:`cost_latency_subset`); an objective with no spread on the front is left out.

    Args:
        front: ``[points, 2 or 3]`` objectives, as returned for :func:`pareto_front`'s indices.
        weights: 2 or 3 non-negative weights, not all zero.
    """
    positions = np.arange(len(front))
    f = np.asarray(front, dtype=float)
    if len(weights) == 2 and f.shape[1] == 3:
        positions = cost_latency_subset(f)
        f = f[positions, :2]
    w = np.asarray(weights, dtype=float)[: f.shape[1]]
    ideal, nadir = normalise(f)
    spread = nadir > ideal
    if len(f) == 1 or not spread.any() or w[spread].sum() == 0:
        return int(positions[0])
    with warnings.catch_warnings():  # pymoo 0.6.2 imports a deprecated scipy path
        warnings.simplefilter("ignore", DeprecationWarning)
        from pymoo.mcdm.pseudo_weights import PseudoWeights

    w = w[spread] / w[spread].sum()
    chosen = PseudoWeights(w, ideal=ideal[spread], nadir=nadir[spread]).do(f[:, spread])
    return int(positions[int(chosen)])


def _hv2(pts: np.ndarray, ref: np.ndarray) -> float:
    pts = pts[np.lexsort((pts[:, 1], pts[:, 0]))]
    total, prev = 0.0, ref[1]
    for c, lat in pts:
        if lat < prev:
            total += (ref[0] - c) * (prev - lat)
            prev = lat
    return float(total)


def hypervolume(front: np.ndarray, reference: Sequence[float]) -> float:
    """Return the hypervolume dominated by ``front`` up to the ``reference`` point (exact).

    Two objectives: a sum of rectangles; three: slices along the third objective, each the
    two-objective volume of the points at or below it. pymoo's indicator gives the same
    (checked in the tests); this avoids its import in the benchmark's inner loop.
    """
    ref = np.asarray(reference, dtype=float)
    pts = np.asarray(front, dtype=float)
    pts = pts[np.all(pts <= ref, axis=1)] if len(pts) else pts
    if len(pts) == 0:
        return 0.0
    if pts.shape[1] == 2:
        return _hv2(pts, ref)
    levels = np.unique(pts[:, 2])
    total = 0.0
    for k, z in enumerate(levels):
        top = levels[k + 1] if k + 1 < len(levels) else ref[2]
        total += _hv2(pts[pts[:, 2] <= z, :2], ref[:2]) * (top - z)
    return float(total)
