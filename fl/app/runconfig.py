"""The Flower run config of the fedcloud app: one typed record, its Flower keys, its validation.

This module travels inside the FAB (see ``fl/initializer/bundle.py``), so it imports nothing from
the project outside the app. The stack side (``fedcloud/core/training.py``) builds a
:class:`RunConfig`; the ServerApp reads it back from ``context.run_config`` with
:meth:`RunConfig.from_flower`.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import MISSING, asdict, dataclass
from typing import Any

from fl.app.protocol import DEFAULT_WIRE_DTYPE, WIRE_DTYPES

# Classes per model's dataset (covid: Covid / Normal / Viral Pneumonia; CIFAR-10).
MODEL_CLASSES: dict[str, int] = {"covid_cnn": 3, "cifar_cnn": 10}
# Models whose input size is fixed by their architecture.
MODEL_FIXED_IMAGE_SIZE: dict[str, int] = {"cifar_cnn": 32}

# Log line marks: the ServerApp prints "FEDCLOUD_ROUND {json}" after every round and
# "FEDCLOUD_STATUS {json}" at the end; the FL Initializer reads them from the streamed run log.
ROUND_MARK = "FEDCLOUD_ROUND"
STATUS_MARK = "FEDCLOUD_STATUS"
# "FEDCLOUD_RESUME {json}": the ServerApp continues an unfinished run (fl/app/resume.py).
RESUME_MARK = "FEDCLOUD_RESUME"

# Node config keys (``flower-supernode --node-config``) the ClientApp reads.
NODE_DATA_DIR = "data-dir"
NODE_PARTICIPANT = "participant"
NODE_TORCH_THREADS = "torch-threads"
NODE_CACHE_DIR = "cache-dir"

# Python field -> Flower run config key (the keys declared in the app's pyproject.toml).
FLOWER_KEYS: dict[str, str] = {
    "model": "model",
    "width": "width",
    "image_size": "image-size",
    "num_classes": "num-classes",
    "rounds": "num-server-rounds",
    "local_epochs": "local-epochs",
    "batch_size": "batch-size",
    "learning_rate": "learning-rate",
    "fraction_train": "fraction-train",
    "min_nodes": "min-nodes",
    "phase_timeout_s": "phase-timeout-s",
    "node_wait_s": "node-wait-s",
    "seed": "seed",
    "delay_prob": "delay-prob",
    "delay_s": "delay-s",
    "wire_dtype": "wire-dtype",
    "tracking_uri": "tracking-uri",
    "experiment": "experiment",
    "run_name": "run-name",
    "stack": "stack",
    "resume": "resume",
    "secure_aggregation": "secure-aggregation",
    "dp_placement": "dp-placement",
    "dp_clipping_norm": "dp-clipping-norm",
    "dp_noise_multiplier": "dp-noise-multiplier",
    "dp_delta": "dp-delta",
}

# Where differential-privacy noise is added: nowhere, by each participant, by the aggregator.
DP_PLACEMENTS = ("off", "client", "server")


class RunConfigError(ValueError):
    """A run config value is missing or invalid (the message names the Flower key)."""


@dataclass(frozen=True)
class RunConfig:
    """Everything one run needs, as the ServerApp and ClientApp see it.

    ``delay_prob``/``delay_s`` reproduce the communication-delay study: after local training
    each client sleeps ``delay_s`` seconds with probability ``delay_prob``.
    ``wire_dtype`` is how model arrays travel (``fl/app/protocol.py``).
    ``tracking_uri`` empty means: record the rounds nowhere but the run log.
    ``resume``: continue the store's unfinished run of the same config (``fl/app/resume.py``).
    ``secure_aggregation``: SecAgg+ (the aggregator sees only the sum of masked updates).
    ``dp_placement``: ``off``; ``client`` (each participant clips its update to
    ``dp_clipping_norm`` and adds its share of Gaussian noise, so that the sum carries
    ``dp_noise_multiplier * dp_clipping_norm``); ``server`` (participants clip, the aggregator
    adds that noise to the sum). ``dp_delta`` is the delta of the (epsilon, delta) guarantee.
    """

    model: str
    width: int
    image_size: int
    num_classes: int
    rounds: int
    local_epochs: int
    batch_size: int
    learning_rate: float
    fraction_train: float
    min_nodes: int
    phase_timeout_s: float
    node_wait_s: float
    seed: int
    delay_prob: float = 0.0
    delay_s: float = 0.0
    wire_dtype: str = DEFAULT_WIRE_DTYPE
    tracking_uri: str = ""
    experiment: str = "fedcloud"
    run_name: str = ""
    stack: str = ""
    resume: bool = True
    secure_aggregation: bool = True
    dp_placement: str = "off"
    dp_clipping_norm: float = 1.0
    dp_noise_multiplier: float = 1.0
    dp_delta: float = 1e-5

    @property
    def dp(self) -> bool:
        """Whether differential-privacy noise is added (``dp_placement`` is not ``off``)."""
        return self.dp_placement != "off"

    @property
    def protection(self) -> str:
        """A short label of how updates are protected, for logs and run params.

        One word, ``secagg+`` (secure aggregation) or ``plain``, then, with differential
        privacy, a space and ``dp(client)`` or ``dp(server)``: ``"secagg+"``, ``"plain"``,
        ``"secagg+ dp(client)"``, ``"plain dp(server)"``.
        """
        label = "secagg+" if self.secure_aggregation else "plain"
        return f"{label} dp({self.dp_placement})" if self.dp else label

    def model_spec(self) -> dict[str, Any]:
        """Return the model spec ``fl.app.task.build_model`` takes (also recorded as run params)."""
        return {"model": self.model, "width": self.width, "image_size": self.image_size,
                "num_classes": self.num_classes}

    def to_flower(self) -> dict[str, str | int | float | bool]:
        """Return the Flower run config mapping (hyphenated keys)."""
        return {FLOWER_KEYS[k]: v for k, v in asdict(self).items()}

    @classmethod
    def from_flower(cls, values: Mapping[str, Any]) -> RunConfig:
        """Read and validate a Flower run config (``context.run_config``).

        Raises:
            RunConfigError: A key is missing, has the wrong type, or is out of range.
        """
        fields = cls.__dataclass_fields__
        kwargs: dict[str, Any] = {}
        for name, key in FLOWER_KEYS.items():
            if key not in values:
                if fields[name].default is not MISSING:
                    continue
                raise RunConfigError(f"run config key '{key}' is missing")
            value = values[key]
            kind = fields[name].type
            try:
                if kind == "int":
                    if isinstance(value, bool) or int(value) != value:
                        raise TypeError
                    value = int(value)
                elif kind == "float":
                    if isinstance(value, bool):
                        raise TypeError
                    value = float(value)
                elif kind == "str" and not isinstance(value, str):
                    raise TypeError
                if kind == "bool" and not isinstance(value, bool):
                    raise TypeError
            except (TypeError, ValueError):
                raise RunConfigError(
                    f"run config key '{key}' must be {kind}, got {value!r}") from None
            kwargs[name] = value
        cfg = cls(**kwargs)
        cfg.validate()
        return cfg

    def validate(self) -> None:
        """Check ranges and combinations.

        Raises:
            RunConfigError: The first problem found, naming the Flower key.
        """
        if self.model not in MODEL_CLASSES:
            raise RunConfigError(f"run config key 'model' is '{self.model}'; use one of "
                                 f"{sorted(MODEL_CLASSES)}")
        if self.num_classes != MODEL_CLASSES[self.model]:
            raise RunConfigError(f"run config key 'num-classes' is {self.num_classes}; "
                                 f"{self.model} has {MODEL_CLASSES[self.model]}")
        checks = [
            ("width", self.width >= 1), ("image-size", self.image_size >= 8),
            ("num-server-rounds", self.rounds >= 1), ("local-epochs", self.local_epochs >= 1),
            ("batch-size", self.batch_size >= 1), ("learning-rate", self.learning_rate > 0),
            ("fraction-train", 0 < self.fraction_train <= 1), ("min-nodes", self.min_nodes >= 1),
            ("phase-timeout-s", self.phase_timeout_s > 0), ("node-wait-s", self.node_wait_s >= 0),
            ("delay-prob", 0 <= self.delay_prob <= 1), ("delay-s", self.delay_s >= 0),
            ("dp-clipping-norm", 0 < self.dp_clipping_norm < math.inf),
            ("dp-noise-multiplier", 0 <= self.dp_noise_multiplier < math.inf),
            ("dp-delta", 0 < self.dp_delta < 1),
        ]
        if self.wire_dtype not in WIRE_DTYPES:
            raise RunConfigError(f"run config key 'wire-dtype' is '{self.wire_dtype}'; use one "
                                 f"of {sorted(WIRE_DTYPES)}")
        if self.dp_placement not in DP_PLACEMENTS:
            raise RunConfigError(f"run config key 'dp-placement' is '{self.dp_placement}'; use "
                                 f"one of {list(DP_PLACEMENTS)}")
        for key, ok in checks:
            if not ok:
                raise RunConfigError(f"run config key '{key}' is out of range")
        if self.secure_aggregation and self.min_nodes < 2:
            raise RunConfigError("run config key 'min-nodes' is 1 with secure-aggregation on (a "
                                 "sum of one is that participant's update); set it to 2 or more")
        if self.dp and self.dp_noise_multiplier == 0:
            raise RunConfigError(f"run config key 'dp-noise-multiplier' is 0 with dp-placement "
                                 f"'{self.dp_placement}'; give a noise multiplier > 0 or set "
                                 "dp-placement 'off'")
