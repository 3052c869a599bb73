"""The ``fedcloud:training`` section, typed, and its rendering as a Flower run config.

:meth:`TrainingSettings.run_config` maps it to the keys the ServerApp reads
(``fl/app/runconfig.py``); :func:`config_args` renders ``--run-config``/``--node-config``.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from fedcloud.core.config import ConfigView
from fedcloud.core.errors import ConfigError
from fl.app.protocol import WIRE_DTYPES
from fl.app.runconfig import MODEL_CLASSES, MODEL_FIXED_IMAGE_SIZE, RunConfig

KEYS = ("model", "width", "imageSize", "rounds", "localEpochs", "batchSize", "learningRate",
        "fractionTrain", "minNodes", "phaseTimeoutS", "nodeWaitS", "seed", "delayProb", "delayS",
        "wireDtype", "resume", "maxResumes", "aggregatorWaitS", "insecure")


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
            resume=self.resume,
        )

    def run_config_arg(self, tracking_uri: str = "", experiment: str = "fedcloud",
                       run_name: str = "", stack: str = "") -> str:
        """Return the ``--run-config`` string for ``flwr run``."""
        return config_args(self.run_config(tracking_uri, experiment, run_name, stack).to_flower())


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
    )
    return settings
