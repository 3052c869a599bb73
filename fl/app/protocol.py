"""What one run puts on the wire, declared once: model copies per participant and exchange.

The ServerApp (``fl/app/strategy.py``) sends exactly these exchanges, and the optimizer's time,
cost and emissions models (``optimizer/cost.py``) read them through :func:`traffic` instead of
constants of their own; ``benchmarks/flower_round.py`` checks the prediction against the bytes
Flower records. No torch or Flower import: the CLI's planner reads it too. See fl/README.md,
"One exchange per round".
"""

from __future__ import annotations

from dataclasses import dataclass

# Bytes per floating-point element on the wire, per run-config ``wire-dtype``.
WIRE_DTYPES: dict[str, int] = {"float32": 4, "float16": 2}
DEFAULT_WIRE_DTYPE = "float32"
# Bytes per float element of the models as trained and aggregated (float32).
TRAIN_ELEMENT_BYTES = 4
# Key of the round's ConfigRecord "config" holding how many participants the round sampled
# (each adds its share of the noise with client-side differential privacy).
DP_SAMPLED = "dp-sampled"
# The ConfigRecord (and its key) a participant's secure setup reply carries its training
# example count in, so the aggregator sets the weight bound before any update is masked.
COUNT_RECORD, COUNT_KEY = "fedcloud-count", "train-examples"


@dataclass(frozen=True)
class Exchange:
    """One message exchange between the ServerApp and each sampled participant.

    Attributes:
        name: What the exchange does.
        downloads: Model copies sent to each participant (aggregator -> participant).
        uploads: Model copies each participant sends back.
        per_round: ``True``: once every round; ``False``: once per run.
    """

    name: str
    downloads: int
    uploads: int
    per_round: bool


# A round is one exchange: the participant evaluates the global model it receives, trains it and
# returns the update with both sets of metrics. One evaluation of the last model ends the run.
EXCHANGES: tuple[Exchange, ...] = (
    Exchange("evaluate-and-train", downloads=1, uploads=1, per_round=True),
    Exchange("final-evaluate", downloads=1, uploads=0, per_round=False),
)
# A secure round (fl/app/secure.py) adds three small exchanges (setup, share keys, unmask:
# keys and secret shares, kilobytes) around the same one; its upload is the masked vector, one
# uint32 per model element whatever the wire dtype. Two of them (the next round's setup and
# share keys) ride on a round's collect and unmask messages while the same participants go on,
# so only a run's first round (and one whose participants changed) runs all three.
SECURE_KEY_EXCHANGES = 3
SECURE_AHEAD_EXCHANGES = 2
# Records carrying the next round's SecAgg+ stage on this round's message (and its reply), and
# the weight bound the share-keys stage sets (so a fitted bound needs no second setup).
AHEAD_RECORD = "fedcloud-ahead"
BOUND_KEY = "fedcloud-max-weight"
# Attempts of one secure round: again after losing too many participants (once they rejoined,
# or with whoever is connected), or with a larger weight bound.
SECURE_ATTEMPTS = 3
MASKED_ELEMENT_BYTES = 4
# Round trips of one small exchange on the critical path: the node's pull and its reply's
# push, the ServerApp's push and its pull.
SMALL_EXCHANGE_RTTS = 4


@dataclass(frozen=True)
class Traffic:
    """The model copies a run moves, for one wire dtype (from :data:`EXCHANGES`).

    Attributes:
        wire_dtype: ``float32`` or ``float16``.
        wire_ratio: Wire bytes of a model copy / its float32 bytes.
        downloads_per_round: Copies to each participant per round.
        uploads_per_round: Copies from each participant per round.
        downloads_per_run: Copies to each participant once per run (the final evaluation).
        uploads_per_run: Copies from each participant once per run.
        phases_per_round: Message exchanges per round (a secure run's later rounds).
        upload_ratio: Wire bytes of an uploaded copy / its float32 bytes (the masked vector's
            in a secure round).
        extra_rtts_per_round: Round trips the small exchanges add to a round.
        extra_rtts_per_run: Round trips the small exchanges add once per run (a secure run's
            first round sets up its keys on its own).
        secure: Rounds are secure aggregation rounds.
    """

    wire_dtype: str
    wire_ratio: float
    downloads_per_round: int
    uploads_per_round: int
    downloads_per_run: int
    uploads_per_run: int
    phases_per_round: int
    upload_ratio: float = 1.0
    extra_rtts_per_round: int = 0
    extra_rtts_per_run: int = 0
    secure: bool = False

    def copy_bytes(self, model_bytes: float) -> float:
        """Wire bytes of one copy of a model of ``model_bytes`` float32 bytes."""
        return model_bytes * self.wire_ratio

    def job_bytes(self, model_bytes: float, participants: int, rounds: int) -> tuple[float, float]:
        """``(downloads, uploads)`` in bytes over a run of ``rounds`` with ``participants``."""
        one = self.copy_bytes(model_bytes) * participants
        down = one * (self.downloads_per_round * rounds + self.downloads_per_run)
        up_one = model_bytes * self.upload_ratio * participants
        up = up_one * (self.uploads_per_round * rounds + self.uploads_per_run)
        return down, up

    def round_copies(self) -> float:
        """Model copies (at the wire dtype) one participant moves in one round, both ways."""
        return self.downloads_per_round + self.uploads_per_round * (
            self.upload_ratio / self.wire_ratio)


def traffic(wire_dtype: str = DEFAULT_WIRE_DTYPE, secure: bool = False) -> Traffic:
    """Return the declared traffic of a run sending model arrays as ``wire_dtype``.

    ``secure``: rounds are secure aggregation rounds (masked uploads, one key exchange on a
    round's critical path, two more in the first round).

    Raises:
        ValueError: ``wire_dtype`` is not one of :data:`WIRE_DTYPES`.
    """
    if wire_dtype not in WIRE_DTYPES:
        raise ValueError(f"wire dtype '{wire_dtype}' is not one of {sorted(WIRE_DTYPES)}")
    rounds = [e for e in EXCHANGES if e.per_round]
    once = [e for e in EXCHANGES if not e.per_round]
    wire_ratio = WIRE_DTYPES[wire_dtype] / TRAIN_ELEMENT_BYTES
    steady = SECURE_KEY_EXCHANGES - SECURE_AHEAD_EXCHANGES
    return Traffic(
        wire_dtype=wire_dtype,
        wire_ratio=wire_ratio,
        downloads_per_round=sum(e.downloads for e in rounds),
        uploads_per_round=sum(e.uploads for e in rounds),
        downloads_per_run=sum(e.downloads for e in once),
        uploads_per_run=sum(e.uploads for e in once),
        phases_per_round=len(rounds) + (steady if secure else 0),
        upload_ratio=MASKED_ELEMENT_BYTES / TRAIN_ELEMENT_BYTES if secure else wire_ratio,
        extra_rtts_per_round=steady * SMALL_EXCHANGE_RTTS if secure else 0,
        extra_rtts_per_run=SECURE_AHEAD_EXCHANGES * SMALL_EXCHANGE_RTTS if secure else 0,
        secure=secure,
    )
