"""The Pareto front and the weighted pick, defined once for both methods.

Both NSGA-II and the exhaustive method end here: they hand over the option indices they have
evaluated, and this module keeps the feasible, non-dominated, distinct points (one option per
point of the objective space, the first in catalogue order), sorted by cost. The weighted pick
then uses pymoo's pseudo-weights on that front, so "same pick" compares like with like.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence

import numpy as np


def pareto_front(objectives: np.ndarray, candidates: np.ndarray) -> np.ndarray:
    """Return the indices of the non-dominated, distinct points among ``candidates``.

    Args:
        objectives: ``[options, 2]`` array of (cost, latency), both minimised.
        candidates: Option indices to consider (feasible ones; duplicates allowed).

    Returns:
        Option indices sorted by cost ascending (latency therefore descending); of several
        options with the same objectives, only the one with the lowest index.
    """
    idx = np.unique(np.asarray(candidates, dtype=np.int64))
    if idx.size == 0:
        return idx
    f = objectives[idx]
    # Sort by cost, then latency, then index; a point is on the front iff its latency is
    # strictly below every latency seen before it.
    order = np.lexsort((idx, f[:, 1], f[:, 0]))
    keep: list[int] = []
    best = np.inf
    for k in order:
        if f[k, 1] < best:
            keep.append(int(idx[k]))
            best = f[k, 1]
    return np.array(keep, dtype=np.int64)


def normalise(front: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Return the ideal and nadir points of a front (per-objective min and max)."""
    return front.min(axis=0), front.max(axis=0)


def pick(front: np.ndarray, weights: Sequence[float]) -> int:
    """Return the position in ``front`` that the cost:latency ``weights`` pick.

    pymoo's :class:`~pymoo.mcdm.pseudo_weights.PseudoWeights`: each point's pseudo-weight for an
    objective is its normalised distance from the worst value of that objective on the front,
    ``(nadir - f) / (nadir - ideal)``, scaled to sum to one; the point whose pseudo-weights are
    closest (L1) to the requested weights (scaled to sum to one) is picked. Normalisation uses
    the front's own ideal and nadir, so the weights are relative to the trade-off actually
    available, not to absolute units. Ties go to the first (cheapest) point.

    Args:
        front: ``[points, 2]`` objectives, as returned for :func:`pareto_front`'s indices.
        weights: ``(cost, latency)`` weights, non-negative, not both zero.
    """
    if len(front) == 1:
        return 0
    with warnings.catch_warnings():  # pymoo 0.6.2 imports a deprecated scipy path
        warnings.simplefilter("ignore", DeprecationWarning)
        from pymoo.mcdm.pseudo_weights import PseudoWeights

    w = np.asarray(weights, dtype=float)
    w = w / w.sum()
    ideal, nadir = normalise(front)
    # A front of distinct non-dominated points in two objectives has nadir > ideal in both.
    return int(PseudoWeights(w, ideal=ideal, nadir=nadir).do(front))


def hypervolume(front: np.ndarray, reference: Sequence[float]) -> float:
    """Return the hypervolume dominated by ``front`` up to the ``reference`` point.

    In two objectives this is an exact sum of rectangles; pymoo's indicator gives the same
    (checked in the tests), this avoids its import in the benchmark's inner loop.
    """
    ref = np.asarray(reference, dtype=float)
    pts = front[np.all(front <= ref, axis=1)]
    if len(pts) == 0:
        return 0.0
    pts = pts[np.lexsort((pts[:, 1], pts[:, 0]))]
    total, prev_lat = 0.0, ref[1]
    for c, lat in pts:
        if lat < prev_lat:
            total += (ref[0] - c) * (prev_lat - lat)
            prev_lat = lat
    return float(total)
