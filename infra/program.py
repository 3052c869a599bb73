"""The Pulumi program's settings: ``pulumi.Config()`` read once into frozen dataclasses.

The program builds the same :class:`fedcloud.core.config.RawConfig` as the local path (every key
declared in ``Pulumi.yaml``, defaults from there only), then parses what the aggregator needs:
the participants, the network policy, the placement (the optimizer's choice or the stack's
pin), the operator's SSH key and the tags. Every problem is a :class:`ConfigError` naming the key
and the fix; ``__main__.py`` turns it into ``pulumi.RunError``.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fedcloud.core.config import (
    ROOT,
    ConfigView,
    RawConfig,
    from_mapping,
    project_declarations,
    project_defaults,
)
from fedcloud.core.errors import ConfigError
from fedcloud.core.participants import Participant, parse_participants
from infra import CLOUDS
from infra.component import Placement
from infra.network import NetworkPolicy, network_policy
from optimizer.result import plan_output

TARGETS = ("auto", *CLOUDS)
# The keys the training dispatch needs (a change to any of them means a new training run).
DISPATCH_KEYS = ("participants", "training", "orchestrator", "registry", "stateDir")
_SCALAR_TYPES = ("string", "boolean", "integer")
# The cloud's own stack config (what `fedcloud auth add` sets) that an explicit provider must be
# handed: unlike the default provider, an explicit one does not read `<cloud>:*` config. Only AWS
# needs one (its region is the optimizer's); GCP and Azure use their default providers.
PROVIDER_CONFIG = {"aws": (("accessKey", "access_key", False), ("secretKey", "secret_key", True),
                           ("token", "token", True), ("profile", "profile", False))}


@dataclass(frozen=True)
class ProgramSettings:
    """Everything the program decides from config, before any resource exists.

    Attributes:
        raw: The stack's config (project defaults overlaid with the stack's values).
        participants: The federation.
        policy: The aggregator's inbound rules.
        target: ``auto`` (the optimizer picks the cloud) or a cloud name.
        ssh_public_key: The operator's OpenSSH public key.
        ssh_private_key_path: Its private key's path on the operator's machine (the public
            key's path without ``.pub``); read only at ``pulumi destroy`` time.
        tags: Tags for every cloud resource (the stack's ``tags`` plus ``stack``).
        disk_gb: The aggregator's boot disk size.
        secret_keys: Bare keys set as secrets (``pulumi config set --secret``).
    """

    raw: RawConfig
    participants: tuple[Participant, ...]
    policy: NetworkPolicy
    target: str
    ssh_public_key: str
    ssh_private_key_path: str
    tags: Mapping[str, str] = field(default_factory=dict)
    disk_gb: int = 30

    secret_keys: frozenset[str] = frozenset()

    @property
    def dispatch_config(self) -> dict[str, Any]:
        """The config values the training dispatch resource receives (plain, JSON-able)."""
        return {k: self.raw.values[k] for k in DISPATCH_KEYS if k in self.raw.values}

    @property
    def dispatch_config_is_secret(self) -> bool:
        """Whether any of those keys was set with ``--secret`` (the input must stay secret)."""
        return any(k in self.secret_keys for k in DISPATCH_KEYS)


def read_pulumi_config(stack: str) -> RawConfig:
    """Read every key declared in ``Pulumi.yaml`` from ``pulumi.Config("fedcloud")``.

    Args:
        stack: The stack name (``pulumi.get_stack()``).

    Raises:
        ConfigError: A structured value is not valid JSON, or a key is unknown.
    """
    import pulumi

    cfg = pulumi.Config("fedcloud")
    values: dict[str, Any] = {}
    for key, decl in project_declarations().items():
        if decl.get("type") in _SCALAR_TYPES:
            value: Any = cfg.get(key)
        else:
            try:
                value = cfg.get_object(key)
            except pulumi.ConfigTypeError as exc:
                raise ConfigError(
                    f"pulumi config: fedcloud:{key} is not valid structured config ({exc}).",
                    f"set it with 'pulumi config set --path fedcloud:{key}...' or edit "
                    f"stacks/Pulumi.{stack}.yaml.",
                ) from None
        if value is not None:
            values[key] = value
    return from_mapping(stack, "pulumi config", values)


def _aggregator_section(raw: RawConfig) -> ConfigView:
    """``fedcloud:aggregator`` with the sub-keys it leaves out taken from ``Pulumi.yaml``."""
    view = raw.view().sub("aggregator")
    merged = {**(project_defaults().get("aggregator") or {}), **dict(view.data)}
    return ConfigView(view.source, view.prefix, merged)


def _read_ssh_key(raw: RawConfig, aggregator: Mapping[str, Any]) -> tuple[str, str]:
    key = "fedcloud:aggregator.sshPublicKeyPath"
    path_text = aggregator.get("sshPublicKeyPath")
    if not path_text:
        raise ConfigError(
            f"{raw.source}: {key} is not set; the aggregator VM needs the operator's SSH key.",
            f"pulumi config set --path '{key}' ~/.ssh/id_ed25519.pub "
            "(create one with 'ssh-keygen -t ed25519').",
        )
    path = Path(str(path_text)).expanduser()
    if not path.is_absolute():
        path = ROOT / path
    try:
        text = path.read_text(encoding="ascii").strip()
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(
            f"{raw.source}: {key} is {path_text}, which cannot be read ({exc.__class__.__name__}).",
            f"point {key} at an OpenSSH public key file (ssh-keygen -t ed25519 creates "
            "~/.ssh/id_ed25519.pub).",
        ) from None
    if "PRIVATE KEY" in text or len(text.splitlines()) != 1 or not text.startswith(
            ("ssh-", "ecdsa-")):
        raise ConfigError(
            f"{raw.source}: {key} ({path}) is not a one-line OpenSSH public key.",
            f"point {key} at the .pub file, never the private key.",
        )
    # The private key next to it (id_ed25519.pub -> id_ed25519) pulls the model store home.
    private = path.with_suffix("") if path.suffix == ".pub" else path
    return text, str(private)


def secret_config_keys() -> frozenset[str]:
    """The declared ``fedcloud:`` keys whose value is a secret in this stack."""
    from pulumi.runtime.config import is_config_secret

    return frozenset(k for k in project_declarations() if is_config_secret(f"fedcloud:{k}"))


def load_settings(raw: RawConfig, secret_keys: frozenset[str] = frozenset()) -> ProgramSettings:
    """Parse and check what the program needs.

    Args:
        raw: The stack's config.
        secret_keys: Keys set as secrets (:func:`secret_config_keys`).

    Raises:
        ConfigError: Unknown or local target, missing or malformed participants or addresses,
            a missing SSH key.
    """
    top = raw.view()
    aggregator = _aggregator_section(raw)
    target = aggregator.get_str("target")
    if target == "local":
        raise ConfigError(
            f"{raw.source}: fedcloud:aggregator.target is 'local'; the Pulumi program deploys "
            "public-cloud aggregators only.",
            f"run this stack with 'fedcloud up --stack {raw.stack}', or set "
            "fedcloud:aggregator.target to auto, aws, gcp or azure.",
        )
    target = aggregator.get_str("target", choices=TARGETS)
    participants = parse_participants(raw)
    policy = network_policy(participants, top.get_str("operatorCidr"),
                            top.get_bool("allowWorld"))
    ssh_public_key, ssh_private_key_path = _read_ssh_key(raw, aggregator.data)
    tags_view = top.sub("tags", {})
    tags = {str(k): str(tags_view.get_any(str(k))) for k in tags_view.data}
    tags["stack"] = raw.stack
    return ProgramSettings(
        raw=raw, participants=participants, policy=policy, target=target,
        ssh_public_key=ssh_public_key, ssh_private_key_path=ssh_private_key_path, tags=tags,
        disk_gb=aggregator.get_int("diskGb", minimum=10, maximum=4096),
        secret_keys=secret_keys,
    )


@dataclass(frozen=True)
class Decision:
    """Where the aggregator goes and why: the placement and the ``plan`` output (camelCase)."""

    placement: Placement
    plan: Mapping[str, Any]


def decide(settings: ProgramSettings) -> Decision:
    """Run the optimizer on the stack's request (a pin comes back as the choice, with its costs).

    Raises:
        FedcloudError: The optimizer's ``PlanError`` (no feasible placement, with the closest
            options) or a ``ConfigError`` in the request.
    """
    from optimizer import PlanRequest, plan

    result = plan(PlanRequest.from_raw(settings.raw))
    choice = result.choice
    placement = Placement(cloud=str(choice.cloud), region=str(choice.region),
                          instance_type=str(choice.instance_type))
    return Decision(placement, plan_output(result))


def provider_config(cloud: str) -> dict[str, Any]:
    """Read the chosen cloud's own config (``aws:accessKey``...) as explicit provider arguments.

    Secret keys come back as secret Outputs (``pulumi.Config.get_secret``).
    """
    import pulumi

    cfg = pulumi.Config(cloud)
    out: dict[str, Any] = {}
    for key, arg, secret in PROVIDER_CONFIG.get(cloud, ()):
        value = cfg.get_secret(key) if secret else cfg.get(key)
        if value is not None:
            out[arg] = value
    return out
