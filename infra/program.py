"""The Pulumi program's inputs: ``pulumi.Config()`` as a :class:`RawConfig`, keys and credentials.

``__main__.py`` parses the result into the same :class:`fedcloud.core.stack.StackConfig` as the
local stack; the rest here is what only a Pulumi run has (secrets, the cloud's own config, the
operator's SSH key for the aggregator VM).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from fedcloud.core.config import ROOT, RawConfig, from_mapping, project_declarations
from fedcloud.core.errors import ConfigError
from fedcloud.core.stack import StackConfig

_SCALAR_TYPES = ("string", "boolean", "integer")
# The cloud's own stack config (what `fedcloud auth add` sets) that an explicit provider must be
# handed: unlike the default provider, an explicit one does not read `<cloud>:*` config. Only AWS
# needs one (its region is the optimizer's); GCP and Azure use their default providers.
PROVIDER_CONFIG = {"aws": (("accessKey", "access_key", False), ("secretKey", "secret_key", True),
                           ("token", "token", True), ("profile", "profile", False))}


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


def read_ssh_key(cfg: StackConfig) -> tuple[str, str]:
    """Return the operator's OpenSSH public key and the path of its private key.

    Raises:
        ConfigError: ``fedcloud:aggregator.sshPublicKeyPath`` is unset, unreadable or not a
            one-line public key.
    """
    key = "fedcloud:aggregator.sshPublicKeyPath"
    path_text = cfg.aggregator.ssh_public_key_path
    if not path_text:
        raise ConfigError(
            f"{cfg.source}: {key} is not set; the aggregator VM needs the operator's SSH key.",
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
            f"{cfg.source}: {key} is {path_text}, which cannot be read ({exc.__class__.__name__}).",
            f"point {key} at an OpenSSH public key file (ssh-keygen -t ed25519 creates "
            "~/.ssh/id_ed25519.pub).",
        ) from None
    if "PRIVATE KEY" in text or len(text.splitlines()) != 1 or not text.startswith(
            ("ssh-", "ecdsa-")):
        raise ConfigError(
            f"{cfg.source}: {key} ({path}) is not a one-line OpenSSH public key.",
            f"point {key} at the .pub file, never the private key.",
        )
    # The private key next to it (id_ed25519.pub -> id_ed25519) pulls the model store home.
    private = path.with_suffix("") if path.suffix == ".pub" else path
    return text, str(private)


def secret_config_keys() -> frozenset[str]:
    """The declared ``fedcloud:`` keys whose value is a secret in this stack."""
    from pulumi.runtime.config import is_config_secret

    return frozenset(k for k in project_declarations() if is_config_secret(f"fedcloud:{k}"))


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
