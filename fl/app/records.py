"""The per-round record interface between the ServerApp and the Model Manager.

The ServerApp (``fl/app/server_app.py``) writes one :class:`RoundRecord` and the global model's
``state_dict`` after every round through a :class:`RoundStore`; ``fl/app/store.py`` backs it with
MLflow (tracking store + artifacts). Nothing here imports torch, Flower or MLflow.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

# The five global metrics every round reports (macro precision/recall/F1 from summed
# confusion matrices).
METRICS: tuple[str, ...] = ("loss", "accuracy", "precision", "recall", "f1")
# Keys of RoundRecord.extra (and of the round line) naming participants: whose train replies
# were aggregated, and who was sent the round but gave no valid reply.
CONTRIBUTORS = "contributors"
MISSING = "missing_participants"


@dataclass(frozen=True)
class RoundRecord:
    """One round's global evaluation.

    Attributes:
        server_round: 0 for the initial model, then 1..rounds.
        metrics: The five :data:`METRICS` (plus any extra) for the global model.
        per_client: One mapping per participant: ``participant``/``node_id``, ``num_examples``
            and the same metric names.
        confusion: The summed confusion matrix (rows = true class, columns = predicted).
        extra: Round-level figures (training time, nodes, phase times) and the participants:
            :data:`CONTRIBUTORS` (sorted names whose train replies were aggregated),
            ``evaluated_by``, :data:`MISSING` (sent the round, no valid reply).
    """

    server_round: int
    metrics: Mapping[str, float]
    per_client: tuple[Mapping[str, Any], ...] = ()
    confusion: tuple[tuple[int, ...], ...] = ()
    extra: Mapping[str, Any] = field(default_factory=dict)

    @property
    def contributors(self) -> tuple[str, ...]:
        """The participants whose train replies were aggregated into this round's model."""
        return tuple(str(p) for p in self.extra.get(CONTRIBUTORS, ()))


class RoundStore(Protocol):
    """Where the rounds of one training run are recorded (implemented by ``fl/app/store.py``)."""

    def start_run(self, run_name: str, params: Mapping[str, Any], tags: Mapping[str, str]) -> str:
        """Open a run with its parameters (run config, model spec, aggregator choice) and tags.

        Returns:
            The store's run id.
        """
        ...

    def log_round(self, record: RoundRecord, state_dict: Mapping[str, Any]) -> None:
        """Record one round's metrics and its global model checkpoint (atomically)."""
        ...

    def end_run(self, status: str) -> None:
        """Close the run with a final status (``FINISHED``, ``FAILED``, ``KILLED``)."""
        ...
