"""The ``fedcloud:training`` section, typed, and its rendering as a Flower run config.

:meth:`TrainingSettings.run_config` maps it to the keys the ServerApp reads
(``fl/app/runconfig.py``); :func:`config_args` renders ``--run-config``/``--node-config``.
:meth:`TrainingSettings.protection_output` says what each party sees with the stack's secure
aggregation and differential-privacy options.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from fedcloud.core.config import ConfigView
from fedcloud.core.errors import ConfigError
from fl.app.protocol import WIRE_DTYPES
from fl.app.runconfig import DP_PLACEMENTS, MODEL_CLASSES, MODEL_FIXED_IMAGE_SIZE, RunConfig

KEYS = ("model", "width", "imageSize", "rounds", "localEpochs", "batchSize", "learningRate",
        "fractionTrain", "minNodes", "phaseTimeoutS", "nodeWaitS", "seed", "delayProb", "delayS",
        "wireDtype", "resume", "maxResumes", "aggregatorWaitS", "insecure", "secureAggregation",
        "privacy")
PRIVACY_KEYS = ("placement", "clippingNorm", "noiseMultiplier", "delta")


def config_args(values: Mapping[str, str | int | float | bool]) -> str:
    """Render ``key=value`` pairs the way Flower parses ``--run-config`` and ``--node-config``.

    Strings become TOML literal strings (``'...'``): Flower's parser takes a quoted value up to
    the next quote with no escapes, so a value holding a quote or a newline is refused.

    Raises:
        ConfigError: A key is not a bare TOML key, or a string holds ``'`` or a newline.
    """
    parts = []
    for key, value in values.items():
        if not key or not all(c.isalnum() or c in "-_" for c in key):
            raise ConfigError(f"Flower config key '{key}' is not a bare TOML key.",
                              "use letters, digits, '-' and '_' only.")
        if isinstance(value, bool):
            text = "true" if value else "false"
        elif isinstance(value, int | float):
            text = repr(value)
        else:
            if "'" in value or "\n" in value or "\r" in value:
                raise ConfigError(
                    f"Flower config value of '{key}' ({value!r}) holds a quote or a newline.",
                    "use a path or name without single quotes or newlines.",
                )
            text = f"'{value}'"
        parts.append(f"{key}={text}")
    return " ".join(parts)


@dataclass(frozen=True)
class PrivacySettings:
    """``fedcloud:training.privacy``: differential privacy of the released models.

    Attributes:
        placement: ``off``; ``client`` (each participant clips its update to ``clipping_norm``
            and adds its share of Gaussian noise, so that the sum carries
            ``noise_multiplier * clipping_norm``); ``server`` (participants clip, the
            aggregator adds that noise to the sum).
        clipping_norm: L2 bound of one participant's update.
        noise_multiplier: Noise standard deviation over ``clipping_norm`` (> 0 unless off).
        delta: The delta of the (epsilon, delta) guarantee.
    """

    placement: str
    clipping_norm: float
    noise_multiplier: float
    delta: float

    @property
    def enabled(self) -> bool:
        """Whether noise is added (``placement`` is not ``off``)."""
        return self.placement != "off"

    def to_output(self) -> dict[str, Any] | None:
        """The ``protection.privacy`` output: the settings, or ``None`` when off."""
        if not self.enabled:
            return None
        return {"placement": self.placement, "clippingNorm": self.clipping_norm,
                "noiseMultiplier": self.noise_multiplier, "delta": self.delta}


@dataclass(frozen=True)
class TrainingSettings:
    """The validated ``fedcloud:training`` section.

    Attributes:
        model: ``covid_cnn`` or ``cifar_cnn``.
        width: Channel width of the covid CNN (32 = the case study's ~26 MB model).
        image_size: Side of the square input images in pixels.
        rounds: Federated rounds.
        local_epochs: Local epochs per round.
        batch_size: Local batch size.
        learning_rate: SGD learning rate.
        fraction_train: Fraction of connected nodes sampled for training each round.
        min_nodes: Fewest nodes a round may run with; below it the run ends with status
            ``NODES_LOST`` (never waits forever).
        phase_timeout_s: Longest wait for the replies of one train/evaluate phase.
        node_wait_s: Longest wait for ``min_nodes`` to be connected before a phase.
        seed: Seed of model initialisation and data shuffling.
        delay_prob: Communication-delay study: probability that a client sleeps after training.
        delay_s: Communication-delay study: how long it sleeps (seconds).
        wire_dtype: ``float32`` or ``float16``: how model arrays travel (training and
            aggregation stay float32; ``fl/app/protocol.py``).
        resume: Continue the store's unfinished run of the same config from its last
            committed round (``fl/app/resume.py``); false starts a new run.
        max_resumes: How many times one job resumes by itself after its aggregator died.
        aggregator_wait_s: Longest wait for the restarted SuperLink to answer, each time.
        insecure: Development only: no TLS and no node authentication (logged).
        secure_aggregation: SecAgg+: the aggregator sees only the sum of each round's masked
            updates; false (an explicit choice, logged as a warning) shows it each update.
        privacy: Differential privacy of the released models.
    """

    model: str
    width: int
    image_size: int
    rounds: int
    local_epochs: int
    batch_size: int
    learning_rate: float
    fraction_train: float
    min_nodes: int
    phase_timeout_s: float
    node_wait_s: float
    seed: int
    delay_prob: float
    delay_s: float
    wire_dtype: str
    resume: bool
    max_resumes: int
    aggregator_wait_s: float
    insecure: bool
    secure_aggregation: bool
    privacy: PrivacySettings

    @property
    def num_classes(self) -> int:
        """Number of classes of the chosen model's dataset."""
        return MODEL_CLASSES[self.model]

    def run_config(self, tracking_uri: str = "", experiment: str = "fedcloud",
                   run_name: str = "", stack: str = "") -> RunConfig:
        """Return the Flower run config for these settings plus where to record the rounds."""
        return RunConfig(
            model=self.model, width=self.width, image_size=self.image_size,
            num_classes=self.num_classes, rounds=self.rounds, local_epochs=self.local_epochs,
            batch_size=self.batch_size, learning_rate=self.learning_rate,
            fraction_train=self.fraction_train, min_nodes=self.min_nodes,
            phase_timeout_s=self.phase_timeout_s, node_wait_s=self.node_wait_s, seed=self.seed,
            delay_prob=self.delay_prob, delay_s=self.delay_s, wire_dtype=self.wire_dtype,
            tracking_uri=tracking_uri, experiment=experiment, run_name=run_name, stack=stack,
            resume=self.resume, secure_aggregation=self.secure_aggregation,
            dp_placement=self.privacy.placement, dp_clipping_norm=self.privacy.clipping_norm,
            dp_noise_multiplier=self.privacy.noise_multiplier, dp_delta=self.privacy.delta,
        )

    def run_config_arg(self, tracking_uri: str = "", experiment: str = "fedcloud",
                       run_name: str = "", stack: str = "") -> str:
        """Return the ``--run-config`` string for ``flwr run``."""
        return config_args(self.run_config(tracking_uri, experiment, run_name, stack).to_flower())

    def exposure_warning(self, stack: str) -> str | None:
        """The warning to log once per run when secure aggregation is off (else ``None``)."""
        if self.secure_aggregation:
            return None
        return (f"stack '{stack}': fedcloud:training.secureAggregation is false: the aggregator "
                "sees each participant's model update in clear; set it to true for SecAgg+")

    def protection_output(self) -> dict[str, Any]:
        """The ``protection`` stack output: the options and what each party can see with them.

        ``{"secureAggregation", "privacy" (``None`` when off), "aggregatorSees",
        "participantsSee"}``; the two lists are short plain sentences.
        """
        return {"secureAggregation": self.secure_aggregation,
                "privacy": self.privacy.to_output(),
                "aggregatorSees": _aggregator_sees(self.secure_aggregation, self.privacy),
                "participantsSee": ["each round's global model and the final global model, and "
                                    "of another participant's update nothing beyond what these "
                                    "models reveal", *_dp_guarantee(self.privacy)]}


def _aggregator_sees(secure: bool, privacy: PrivacySettings) -> list[str]:
    sees = ["each round: only the sum of the participants' masked model updates (SecAgg+), "
            "never one participant's update" if secure else
            "each round: every participant's model update in clear (secure aggregation is off)",
            "in clear, per participant: its evaluation metrics and confusion matrix, its train "
            "and evaluation example counts, its train loss and timings",
            "who took part in each round and when",
            "each round's global model and the final global model"]
    if privacy.placement == "server":
        sees.append(("the sum of the clipped updates" if secure else "each clipped update")
                    + " before it adds the noise to their sum: the differential-privacy "
                    "guarantee does not hold against the aggregator")
    elif privacy.placement == "client" and secure:
        sees.append("a sum that already carries the noise: the differential-privacy guarantee "
                    "holds against the aggregator too")
    elif privacy.placement == "client":
        sees.append("each update with only its participant's share of the noise: the "
                    "differential-privacy guarantee does not hold against the aggregator")
    if privacy.enabled:
        sees += _dp_guarantee(privacy)
        sees.append("the figures sent in clear (metrics, confusion matrices, counts, loss, "
                    "timings) are not covered by differential privacy")
    return sees


def _dp_guarantee(privacy: PrivacySettings) -> list[str]:
    if not privacy.enabled:
        return []
    return [f"the released models (every round's and the final one, together) carry (epsilon, "
            f"delta={privacy.delta:g})-differential privacy with respect to any one "
            "participant's whole data (epsilon: the training output's epsilon)"]


def parse_privacy(view: ConfigView) -> PrivacySettings:
    """Parse ``fedcloud:training.privacy`` (sub-keys left out took Pulumi.yaml's defaults).

    Raises:
        ConfigError: Unknown sub-key, wrong type or a value out of range (names the key).
    """
    view.check_keys(PRIVACY_KEYS)
    if view.data.get("placement") is False:  # YAML 1.1 reads an unquoted `off` as false
        view = ConfigView(view.source, view.prefix, {**view.data, "placement": "off"})
    if view.data.get("placement") is True:
        raise view.error("placement", f"is true, not one of {list(DP_PLACEMENTS)}",
                         f"set {view.key('placement')} to client or server.")
    placement = view.get_str("placement", choices=DP_PLACEMENTS)
    noise = view.get_float("noiseMultiplier", minimum=0, maximum=1000)
    if placement != "off" and noise == 0:
        raise view.error("noiseMultiplier", f"is 0 with placement '{placement}' (no noise, so "
                         "no differential privacy)",
                         f"set {view.key('noiseMultiplier')} > 0 (e.g. 1.0), or set "
                         f"{view.key('placement')} to off.")
    delta = view.get_float("delta", minimum=0, exclusive_minimum=True)
    if delta >= 1:
        raise view.error("delta", f"must be < 1, got {delta:g}",
                         f"set {view.key('delta')} between 0 and 1, e.g. 0.00001.")
    return PrivacySettings(
        placement=placement,
        clipping_norm=view.get_float("clippingNorm", minimum=0, maximum=1e6,
                                     exclusive_minimum=True),
        noise_multiplier=noise, delta=delta)


def parse_training(view: ConfigView) -> TrainingSettings:
    """Parse and validate a ``training`` section view.

    Raises:
        ConfigError: Unknown key, wrong type, or a value out of range (names the key and fix).
    """
    view.check_keys(KEYS)
    model = view.get_str("model", choices=tuple(MODEL_CLASSES))
    image_size = view.get_int("imageSize", minimum=8, maximum=1024)
    fixed = MODEL_FIXED_IMAGE_SIZE.get(model)
    if fixed is not None and image_size != fixed:
        raise view.error("imageSize", f"is {image_size}, but {model} takes {fixed}x{fixed} "
                         "images", f"set {view.key('imageSize')} to {fixed}.")
    if image_size % 8:
        raise view.error("imageSize", f"is {image_size}, not a multiple of 8 (the CNN pools "
                         "three times)", f"use {image_size - image_size % 8 or 8}.")
    settings = TrainingSettings(
        model=model,
        width=view.get_int("width", minimum=1, maximum=256),
        image_size=image_size,
        rounds=view.get_int("rounds", minimum=1, maximum=10_000),
        local_epochs=view.get_int("localEpochs", minimum=1, maximum=1000),
        batch_size=view.get_int("batchSize", minimum=1, maximum=65_536),
        learning_rate=view.get_float("learningRate", minimum=0, maximum=10,
                                     exclusive_minimum=True),
        fraction_train=view.get_float("fractionTrain", minimum=0, maximum=1,
                                      exclusive_minimum=True),
        min_nodes=view.get_int("minNodes", minimum=1),
        phase_timeout_s=view.get_float("phaseTimeoutS", minimum=1),
        node_wait_s=view.get_float("nodeWaitS", minimum=0),
        seed=view.get_int("seed", minimum=0),
        delay_prob=view.get_float("delayProb", minimum=0, maximum=1),
        delay_s=view.get_float("delayS", minimum=0),
        wire_dtype=view.get_str("wireDtype", choices=tuple(WIRE_DTYPES)),
        resume=view.get_bool("resume"),
        max_resumes=view.get_int("maxResumes", minimum=0, maximum=100),
        aggregator_wait_s=view.get_float("aggregatorWaitS", minimum=1, maximum=3600),
        insecure=view.get_bool("insecure"),
        secure_aggregation=view.get_bool("secureAggregation"),
        privacy=parse_privacy(view.sub("privacy")),
    )
    if settings.secure_aggregation and settings.min_nodes < 2:
        raise view.error("minNodes", "is 1 with secure aggregation on (the sum of one update "
                         "is that update)", f"set {view.key('minNodes')} to 2 or more.")
    return settings
