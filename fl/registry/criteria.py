"""Recommendation criteria: which round's global model is "best" for the user.

Pure functions, no MLflow or torch: parse ``--metric f1 --min accuracy=0.9 --max loss=0.5`` into
:class:`Criteria`, and :func:`choose` the best of a sequence of rounds' metrics. The objective is
maximised for every metric except ``loss`` (minimised); ties go to the earlier candidate (the
caller orders candidates by round, so an earlier round wins a tie).
"""

from __future__ import annotations

import difflib
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from fedcloud.core.errors import RegistryError
from fl.app.records import METRICS

# Metrics where smaller is better; every other metric of METRICS is maximised.
MINIMISED: frozenset[str] = frozenset({"loss"})


def check_metric(name: str, option: str = "--metric") -> str:
    """Return ``name`` if it is one of :data:`fl.app.records.METRICS`.

    Raises:
        RegistryError: The name is unknown (with a did-you-mean hint).
    """
    if name in METRICS:
        return name
    close = difflib.get_close_matches(name, METRICS, n=1, cutoff=0.5)
    hint = f"did you mean '{close[0]}'? " if close else ""
    raise RegistryError(
        f"{option}: unknown metric '{name}'.",
        f"{hint}use one of: {', '.join(METRICS)}.",
    )


def parse_bound(text: str, option: str = "--min") -> tuple[str, float]:
    """Parse ``accuracy=0.9`` into ``("accuracy", 0.9)``.

    Args:
        text: ``METRIC=NUMBER``.
        option: The option name, for the error message.

    Raises:
        RegistryError: No ``=``, an unknown metric, or a value that is not a finite number.
    """
    name, sep, value = text.partition("=")
    name = name.strip()
    if not sep or not name:
        raise RegistryError(f"{option} {text!r}: expected METRIC=NUMBER.",
                            f"write it like {option} accuracy=0.9.")
    check_metric(name, option)
    try:
        number = float(value)
    except ValueError:
        raise RegistryError(f"{option} {text!r}: '{value}' is not a number.",
                            f"write it like {option} {name}=0.9.") from None
    if not math.isfinite(number):
        raise RegistryError(f"{option} {text!r}: the bound must be finite.",
                            f"write it like {option} {name}=0.9.")
    return name, number


@dataclass(frozen=True)
class Criteria:
    """What "best" means: optimise one metric subject to bounds on others.

    Attributes:
        metric: The metric to optimise (maximised, or minimised for ``loss``).
        minimums: Metric to lower bound (inclusive): ``accuracy >= 0.9``.
        maximums: Metric to upper bound (inclusive): ``loss <= 0.5``.
    """

    metric: str
    minimums: Mapping[str, float] = field(default_factory=dict)
    maximums: Mapping[str, float] = field(default_factory=dict)

    @classmethod
    def parse(cls, metric: str, minimums: Sequence[str] = (), maximums: Sequence[str] = (),
              ) -> Criteria:
        """Build criteria from CLI strings (``f1``, ``["accuracy=0.9"]``, ``["loss=0.5"]``).

        Raises:
            RegistryError: An unknown metric or a malformed bound; a bound given twice.
        """
        check_metric(metric)
        mins: dict[str, float] = {}
        maxs: dict[str, float] = {}
        for option, texts, out in (("--min", minimums, mins), ("--max", maximums, maxs)):
            for text in texts:
                name, value = parse_bound(text, option)
                if name in out:
                    raise RegistryError(f"{option} {name} is given twice.",
                                        f"keep one {option} {name}=... .")
                out[name] = value
        return cls(metric=metric, minimums=mins, maximums=maxs)

    @property
    def maximise(self) -> bool:
        """Whether a larger value of :attr:`metric` is better."""
        return self.metric not in MINIMISED

    def describe(self) -> str:
        """Return a one-line description, e.g. ``max f1 with accuracy >= 0.9``."""
        goal = f"{'max' if self.maximise else 'min'} {self.metric}"
        bounds = self.bounds_text()
        return f"{goal} with {bounds}" if bounds else goal

    def bounds_text(self) -> str:
        """Return the bounds as ``accuracy >= 0.9, loss <= 0.5`` (empty when unbounded)."""
        parts = [f"{k} >= {v:g}" for k, v in self.minimums.items()]
        parts += [f"{k} <= {v:g}" for k, v in self.maximums.items()]
        return ", ".join(parts)

    def to_dict(self) -> dict[str, Any]:
        """Return a JSON-ready form (recorded with the registered model version)."""
        return {"metric": self.metric, "goal": "max" if self.maximise else "min",
                "min": dict(self.minimums), "max": dict(self.maximums)}

    def feasible(self, metrics: Mapping[str, float]) -> bool:
        """Whether one round's metrics meet every bound (a missing or NaN value does not)."""
        for name, bound in self.minimums.items():
            value = metrics.get(name)
            if value is None or math.isnan(value) or value < bound:
                return False
        for name, bound in self.maximums.items():
            value = metrics.get(name)
            if value is None or math.isnan(value) or value > bound:
                return False
        objective = metrics.get(self.metric)
        return objective is not None and not math.isnan(objective)


def choose(candidates: Sequence[Mapping[str, float]], criteria: Criteria,
           labels: Sequence[str] | None = None) -> int:
    """Return the index of the best candidate under ``criteria``.

    Args:
        candidates: Each round's metrics, in tie-break order (earliest first).
        criteria: What to optimise and the bounds to meet.
        labels: A name per candidate for messages (``round 3``); defaults to ``#i``.

    Raises:
        RegistryError: There are no candidates, or none meets the bounds (the message gives the
            best value reached for each bounded metric and where).
    """
    names = list(labels) if labels is not None else [f"#{i}" for i in range(len(candidates))]
    if not candidates:
        raise RegistryError("there are no recorded rounds to choose from.",
                            "train a run first (fedcloud up), then retry.")
    best: int | None = None
    for i, metrics in enumerate(candidates):
        if not criteria.feasible(metrics):
            continue
        if best is None:
            best = i
            continue
        value, incumbent = metrics[criteria.metric], candidates[best][criteria.metric]
        # Strict comparison: on a tie the earlier candidate stays.
        if (value > incumbent) if criteria.maximise else (value < incumbent):
            best = i
    if best is not None:
        return best
    reached = []
    # Without bounds the only way to be infeasible is an objective never recorded (NaN).
    bounded = list(dict.fromkeys([*criteria.minimums, *criteria.maximums])) or [criteria.metric]
    for name in bounded:
        values = [(m.get(name, math.nan), names[i]) for i, m in enumerate(candidates)]
        values = [(v, n) for v, n in values if not math.isnan(v)]
        if not values:
            reached.append(f"{name} never recorded")
            continue
        pick = min if name in criteria.maximums and name not in criteria.minimums else max
        value, where = pick(values, key=lambda vn: vn[0])
        reached.append(f"{name} {value:.4g} ({where})")
    raise RegistryError(
        f"no round meets {criteria.bounds_text() or 'the criteria'} (best reached over "
        f"{len(candidates)} round(s): {'; '.join(reached)}).",
        "relax the bounds (--min/--max) or train more rounds.",
    )
