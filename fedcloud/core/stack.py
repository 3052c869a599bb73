"""The stack, read once: :class:`StackConfig`, every section typed and validated.

Both compositions and the CLI build it the same way (:func:`parse` on a :class:`RawConfig`
from a stack file or from ``pulumi.Config``) and hand each part the section it needs.
"""

from __future__ import annotations

import difflib
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from fedcloud.core.config import ROOT, ConfigView, RawConfig, load_stack
from fedcloud.core.files import short
from fedcloud.core.participants import Participant, parse_participants
from fedcloud.core.plan import PlanSettings, parse_plan
from fedcloud.core.training import TrainingSettings, parse_training
from fl.app.protocol import traffic
from fl.app.records import METRICS

HostKeyPolicy = Literal["reject", "tofu"]
HOST_KEY_POLICIES: tuple[HostKeyPolicy, ...] = ("reject", "tofu")
ORCHESTRATOR_KEYS = ("minVcpus", "minMemoryGb", "minDiskGb", "minFreeDiskGb", "maxAttempts",
                     "backoffS", "onlineTimeoutS", "hostKeyPolicy")


@dataclass(frozen=True)
class OrchestratorSettings:
    """``fedcloud:orchestrator``: the minimum VM spec, retries and host-key policy."""

    min_vcpus: float
    min_memory_gb: float
    min_disk_gb: float
    min_free_disk_gb: float
    max_attempts: int
    backoff_s: float
    online_timeout_s: float
    host_key_policy: HostKeyPolicy


@dataclass(frozen=True)
class RegistrySettings:
    """Where the Model Manager keeps the stack's rounds: a store location and an experiment."""

    location: str
    experiment: str


@dataclass(frozen=True)
class BestModelRule:
    """``fedcloud:bestModel``: the metric to optimise and ``metric=value`` lower bounds."""

    metric: str
    minimums: tuple[str, ...]

    def to_output(self) -> dict[str, Any]:
        """The rule as a JSON value (``{"metric": "f1", "min": ["accuracy=0.9"]}``)."""
        return {"metric": self.metric, "min": list(self.minimums)}


@dataclass(frozen=True)
class LocalData:
    """``fedcloud:localData``: the synthetic private data of the local stack."""

    train_per_participant: int
    test_per_participant: int
    alpha: float | None
    seed: int


@dataclass(frozen=True)
class AggregatorSettings:
    """What the aggregator VM and its firewall need beyond the optimizer's placement."""

    ssh_public_key_path: str | None
    disk_gb: int
    operator_cidr: str
    allow_world: bool
    tags: Mapping[str, str]


@dataclass(frozen=True)
class Endpoints:
    """Endpoint overrides (sovereign or private clouds, and the tests); ``None`` = public cloud.

    Attributes:
        aws_sts: STS endpoint URL, passed to boto3 as ``endpoint_url``.
        gcp_resource_manager: Cloud Resource Manager base URL (the token endpoint comes from the
            key file's ``token_uri``).
        azure_authority_host: Microsoft Entra authority host URL (``login.microsoftonline.com``).
        azure_management: Azure Resource Manager base URL (``management.azure.com``).
    """

    aws_sts: str | None = None
    gcp_resource_manager: str | None = None
    azure_authority_host: str | None = None
    azure_management: str | None = None


@dataclass(frozen=True)
class AuthSettings:
    """The stack's ``fedcloud:auth`` section.

    Attributes:
        only_linked: The optimizer offers only clouds linked by ``fedcloud auth add``.
        timeout_s: Connect and read timeout of every validation call, in seconds.
        endpoints: Endpoint overrides.
    """

    only_linked: bool
    timeout_s: float
    endpoints: Endpoints = field(default_factory=Endpoints)


@dataclass(frozen=True)
class StackConfig:
    """One stack's whole configuration, validated.

    Attributes:
        stack: Stack name.
        source: Where the values came from (a file path or ``pulumi config``), for messages.
        state_dir: Directory of the stack's state (queues, certificates, runs, registry).
        participants: The federation and its private VMs.
        plan: The optimizer's request (limits, weights, costs, search).
        aggregator: The aggregator VM's own settings.
        training: The Flower run's settings.
        orchestrator: The Dynamic Task Orchestrator's settings.
        registry: The Model Manager's store.
        best_model: How the run's best round is chosen.
        local_data: The local stack's synthetic data.
        auth: The Cloud Authenticator's settings.
        raw: The merged values, as given to the Pulumi dispatch resource.
    """

    stack: str
    source: str
    state_dir: Path
    participants: tuple[Participant, ...]
    plan: PlanSettings
    aggregator: AggregatorSettings
    training: TrainingSettings
    orchestrator: OrchestratorSettings
    registry: RegistrySettings
    best_model: BestModelRule
    local_data: LocalData
    auth: AuthSettings
    raw: RawConfig

    @property
    def target(self) -> str:
        """``fedcloud:aggregator.target``: ``local``, ``auto`` or a cloud."""
        return self.plan.target


def parse_orchestrator(view: ConfigView) -> OrchestratorSettings:
    """Parse ``fedcloud:orchestrator``."""
    view.check_keys(ORCHESTRATOR_KEYS)
    policy = view.get_str("hostKeyPolicy", choices=HOST_KEY_POLICIES)
    return OrchestratorSettings(
        min_vcpus=view.get_float("minVcpus", minimum=0),
        min_memory_gb=view.get_float("minMemoryGb", minimum=0),
        min_disk_gb=view.get_float("minDiskGb", minimum=0),
        min_free_disk_gb=view.get_float("minFreeDiskGb", minimum=0),
        max_attempts=view.get_int("maxAttempts", minimum=1, maximum=100),
        backoff_s=view.get_float("backoffS", minimum=0, maximum=600),
        online_timeout_s=view.get_float("onlineTimeoutS", minimum=1, maximum=3600),
        host_key_policy="tofu" if policy == "tofu" else "reject",
    )


def parse_registry(view: ConfigView, stack: str, state_dir: Path) -> RegistrySettings:
    """Parse ``fedcloud:registry`` into a store location (a directory or a tracking URI)."""
    view.check_keys(["trackingUri"])
    uri = view.data.get("trackingUri") or ""
    if not isinstance(uri, str):
        raise view.error("trackingUri", "must be a string (a URI, or empty for the embedded store)")
    location = uri.strip()
    if not location:
        location = str(state_dir / "registry")
    elif "://" not in location and not Path(location).expanduser().is_absolute():
        location = str(ROOT / location)  # relative to the project, like fedcloud:stateDir
    return RegistrySettings(location=location, experiment=f"fedcloud-{stack}")


def _check_bound(view: ConfigView, key: str, text: Any) -> str:
    name, sep, value = str(text).partition("=")
    problem = None
    if not isinstance(text, str) or not sep:
        problem = f"is {short(text)!r}, not 'METRIC=NUMBER'"
    elif name.strip() not in METRICS:
        problem = f"names '{short(name.strip())}', not one of {list(METRICS)}"
    else:
        try:
            if not math.isfinite(float(value)):
                problem = "has a bound that is not finite"
        except ValueError:
            problem = f"has '{short(value)}', which is not a number"
    if problem:
        raise view.error(key, problem, f"write it like [\"accuracy=0.9\"] in {view.prefix}.")
    return str(text)


def parse_best_model(view: ConfigView) -> BestModelRule:
    """Parse ``fedcloud:bestModel`` (metric names checked against the app's metrics)."""
    view.check_keys(["metric", "min"])
    metric = view.get_str("metric")
    if metric not in METRICS:
        close = difflib.get_close_matches(metric[:40], METRICS, n=1, cutoff=0.5)
        hint = f"did you mean '{close[0]}'?" if close else f"use one of: {', '.join(METRICS)}."
        raise view.error("metric", f"is '{short(metric)}', not one of {list(METRICS)}", hint)
    mins = tuple(_check_bound(view, f"min[{i}]", b) for i, b in enumerate(view.get_list("min")))
    return BestModelRule(metric=metric, minimums=mins)


def parse_local_data(view: ConfigView) -> LocalData:
    """Parse ``fedcloud:localData``."""
    view.check_keys(["trainPerParticipant", "testPerParticipant", "alpha", "seed"])
    alpha = view.get_float("alpha", minimum=0)
    return LocalData(
        train_per_participant=view.get_int("trainPerParticipant", minimum=3, maximum=100_000),
        test_per_participant=view.get_int("testPerParticipant", minimum=3, maximum=100_000),
        alpha=alpha or None,
        seed=view.get_int("seed", minimum=0),
    )


def parse_aggregator(top: ConfigView) -> AggregatorSettings:
    """Parse the aggregator VM's own keys, the operator's address and the tags."""
    agg = top.sub("aggregator")
    tags_view = top.sub("tags", {})
    tags = {str(k): str(tags_view.get_any(str(k))) for k in tags_view.data}
    return AggregatorSettings(
        ssh_public_key_path=agg.get_str("sshPublicKeyPath", None),
        disk_gb=agg.get_int("diskGb", minimum=10, maximum=4096),
        operator_cidr=top.get_str("operatorCidr"),
        allow_world=top.get_bool("allowWorld"),
        tags=tags,
    )


_ENDPOINT_KEYS = {"awsSts": "aws_sts", "gcpResourceManager": "gcp_resource_manager",
                  "azureAuthorityHost": "azure_authority_host",
                  "azureManagement": "azure_management"}


def parse_auth(view: ConfigView) -> AuthSettings:
    """Parse ``fedcloud:auth`` (linked clouds only, timeouts, endpoint overrides)."""
    view.check_keys(["onlyLinked", "timeoutS", "endpoints"])
    endpoints: dict[str, str | None] = {}
    if view.has("endpoints"):
        ep = view.sub("endpoints")
        ep.check_keys(list(_ENDPOINT_KEYS))
        for key, attr in _ENDPOINT_KEYS.items():
            endpoints[attr] = ep.get_str(key) if ep.has(key) and ep.data.get(key) != "" else None
    return AuthSettings(only_linked=view.get_bool("onlyLinked"),
                        timeout_s=view.get_float("timeoutS", minimum=0, exclusive_minimum=True),
                        endpoints=Endpoints(**endpoints))


def parse(raw: RawConfig) -> StackConfig:
    """Parse and validate every section of a stack (defaults were merged by the loader).

    Raises:
        ConfigError: The first key that is missing, malformed or out of range, by full name.
    """
    top = raw.view()
    training = parse_training(top.sub("training"))
    state_dir = raw.state_dir
    return StackConfig(
        stack=raw.stack,
        source=raw.source,
        state_dir=state_dir,
        participants=parse_participants(raw),
        plan=parse_plan(top, training.rounds, traffic(training.wire_dtype,
                                                           training.secure_aggregation)),
        aggregator=parse_aggregator(top),
        training=training,
        orchestrator=parse_orchestrator(top.sub("orchestrator")),
        registry=parse_registry(top.sub("registry"), raw.stack, state_dir),
        best_model=parse_best_model(top.sub("bestModel")),
        local_data=parse_local_data(top.sub("localData")),
        auth=parse_auth(top.sub("auth")),
        raw=raw,
    )


def load(name: str | None = None, path: str | Path | None = None) -> StackConfig:
    """Read and parse a stack file by name (``stacks/Pulumi.<name>.yaml``) or path."""
    return parse(load_stack(name=name, path=path))
