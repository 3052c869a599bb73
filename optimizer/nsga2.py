"""NSGA-II (pymoo) over the filtered catalogue.

Two integers per individual, ``x = (region slot, size rank)``, repaired into real options; three
objectives (cost, latency, emissions); the normalised limits are the constraints; the result is
the feasible non-dominated set of everything evaluated, after a polish of the front regions'
sizes. See optimizer/README.md, "Search: NSGA-II and the exhaustive ground truth".
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
from pymoo.algorithms.moo.nsga2 import NSGA2, binary_tournament
from pymoo.core.duplicate import DuplicateElimination
from pymoo.core.mating import Mating
from pymoo.core.problem import Problem
from pymoo.core.repair import Repair
from pymoo.operators.crossover.sbx import SBX
from pymoo.operators.mutation.pm import PM
from pymoo.operators.repair.rounding import RoundingRepair
from pymoo.operators.sampling.rnd import IntegerRandomSampling
from pymoo.operators.selection.tournament import TournamentSelection
from pymoo.optimize import minimize

from optimizer.front import pareto_front
from optimizer.space import SearchSpace

# Small distribution indices make SBX and polynomial mutation take larger integer steps (pymoo's
# defaults, 15 and 20, are tuned for continuous variables and mostly return the parent here).
ETA_CROSSOVER = 3.0
ETA_MUTATION = 3.0
# Offspring that duplicate a point already in the population are dropped and mating is retried;
# pymoo retries up to 100 times, which costs more than it finds in a space of ~1,500 options.
MATING_ATTEMPTS = 5


@dataclass(frozen=True)
class Encoding:
    """The integer encoding of a search space (see the module docstring).

    Attributes:
        table: ``[region slots, max types]`` option index, ``-1`` where a region has fewer types.
        counts: Number of types per region slot.
    """

    table: np.ndarray
    counts: np.ndarray

    @classmethod
    def of(cls, space: SearchSpace) -> Encoding:
        """Build the encoding of ``space``."""
        n_regions = len(space.region_keys)
        max_lat = np.full(n_regions, np.inf)
        mean_lat = np.full(n_regions, np.inf)
        max_lat[space.region_of] = space.latency_ms
        mean_lat[space.region_of] = space.mean_latency_ms
        slots = np.lexsort((np.arange(n_regions), mean_lat, max_lat))
        members = [np.flatnonzero(space.region_of == r) for r in slots]
        counts = np.array([len(m) for m in members], dtype=np.int64)
        table = np.full((n_regions, int(counts.max())), -1, dtype=np.int64)
        for s, m in enumerate(members):
            names = np.array([space.rows[i].instance_type for i in m])
            markets = np.array([space.markets[i] for i in m])
            order = np.lexsort((markets, names, space.price_usd_per_hour[m]))
            table[s, : len(m)] = m[order]
        return cls(table=table, counts=counts)

    def repair(self, x: np.ndarray) -> np.ndarray:
        """Return integer genes with the size rank wrapped into each region's range."""
        x = np.asarray(np.rint(x), dtype=np.int64)
        x[:, 0] = np.clip(x[:, 0], 0, len(self.counts) - 1)
        x[:, 1] = np.mod(x[:, 1], self.counts[x[:, 0]])
        return x

    def option(self, x: np.ndarray) -> np.ndarray:
        """Return the option index of each (repaired) individual."""
        x = self.repair(x)
        return np.asarray(self.table[x[:, 0], x[:, 1]])


class SizeRankRepair(Repair):
    """Make every individual a real option (rank wrapped into its region's type count)."""

    def __init__(self, encoding: Encoding) -> None:
        super().__init__()
        self.encoding = encoding

    def _do(self, problem: Any, X: np.ndarray, **kwargs: Any) -> np.ndarray:
        return self.encoding.repair(X)


class SamePointElimination(DuplicateElimination):
    """Duplicates are individuals that map to the same point of the objective space."""

    def __init__(self, encoding: Encoding, canonical: np.ndarray) -> None:
        super().__init__()
        self.encoding = encoding
        self.canonical = canonical

    def _keys(self, pop: Any) -> np.ndarray:
        return np.asarray(self.canonical[self.encoding.option(pop.get("X"))])

    def _do(self, pop: Any, other: Any, is_duplicate: np.ndarray) -> np.ndarray:
        keys = self._keys(pop)
        if other is None:
            _, first = np.unique(keys, return_index=True)
            dup = np.ones(len(keys), dtype=bool)
            dup[first] = False
        else:
            dup = np.isin(keys, self._keys(other))
        is_duplicate[dup] = True
        return is_duplicate


class AggregatorProblem(Problem):
    """Minimise (job cost USD, largest RTT ms, job kg CO2e) subject to the user's limits.

    Evaluates a whole population at once by indexing the precomputed arrays of the space. The
    emissions limit is a third constraint only when the stack sets one.
    """

    def __init__(self, space: SearchSpace, encoding: Encoding) -> None:
        self.limits = np.array([space.max_cost_usd, space.max_latency_ms, space.max_co2e_kg])
        self.n_limits = 3 if np.isfinite(space.max_co2e_kg) else 2
        super().__init__(n_var=2, n_obj=3, n_ieq_constr=self.n_limits, xl=np.array([0, 0]),
                         xu=np.array([len(encoding.counts) - 1, encoding.table.shape[1] - 1]),
                         vtype=int)
        self.space = space
        self.encoding = encoding
        self.f = space.objectives
        self.seen = np.zeros(len(space), dtype=bool)
        self.evaluations = 0

    def _evaluate(self, x: np.ndarray, out: dict[str, Any], *args: Any, **kwargs: Any) -> None:
        idx = self.encoding.option(x)
        self.seen[idx] = True
        self.evaluations += len(idx)
        f = self.f[idx]
        out["F"] = f
        out["G"] = f[:, : self.n_limits] / self.limits[: self.n_limits] - 1.0


@dataclass(frozen=True)
class Nsga2Run:
    """What one NSGA-II run evaluated.

    Attributes:
        evaluated: Option indices evaluated at least once.
        evaluations: Function evaluations (individuals evaluated, with repeats).
        generations: Generations run.
    """

    evaluated: np.ndarray
    evaluations: int
    generations: int


def run(space: SearchSpace, seed: int, pop_size: int, generations: int) -> Nsga2Run:
    """Run NSGA-II on ``space`` and return the options it evaluated.

    Args:
        space: The filtered catalogue with precomputed objectives.
        seed: pymoo's seed (the run is deterministic for a given seed and space).
        pop_size: Population size.
        generations: Number of generations.
    """
    encoding = Encoding.of(space)
    problem = AggregatorProblem(space, encoding)
    repair = SizeRankRepair(encoding)
    duplicates = SamePointElimination(encoding, space.canonical)
    mating = Mating(
        TournamentSelection(func_comp=binary_tournament),
        SBX(prob=0.9, eta=ETA_CROSSOVER, vtype=float, repair=RoundingRepair()),
        PM(prob=1.0, eta=ETA_MUTATION, vtype=float, repair=RoundingRepair()),
        repair=repair,
        eliminate_duplicates=duplicates,
        n_max_iterations=MATING_ATTEMPTS,
    )
    algorithm = NSGA2(
        pop_size=pop_size,
        sampling=IntegerRandomSampling(),
        mating=mating,
        repair=repair,
        eliminate_duplicates=duplicates,
    )
    res = minimize(problem, algorithm, ("n_gen", generations), seed=seed, verbose=False)
    polished = polish_sizes(space, problem.seen)
    return Nsga2Run(evaluated=np.flatnonzero(problem.seen | polished),
                    evaluations=problem.evaluations + int((polished & ~problem.seen).sum()),
                    generations=int(res.algorithm.n_gen or generations))


def polish_sizes(space: SearchSpace, seen: np.ndarray) -> np.ndarray:
    """Every size in the regions of the archive's front (a local search over ``x1``).

    Emissions and cost move with the size inside a region while latency does not, so the
    front's regions usually hold several front points; evaluating their few sizes outright
    costs a handful of evaluations and closes the gaps NSGA-II's crowding leaves there.
    """
    found = np.flatnonzero(seen & space.feasible)
    if found.size == 0:
        return np.zeros(len(space), dtype=bool)
    front = pareto_front(space.objectives, space.canonical[found])
    return np.isin(space.region_of, np.unique(space.region_of[front]))
