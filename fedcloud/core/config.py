"""The stack file and Pulumi.yaml read once: a :class:`RawConfig` with defaults merged, and views.

A stack is ``stacks/Pulumi.<name>.yaml`` (``stackConfigDir: stacks``); every key is declared
once in ``Pulumi.yaml`` with its default. :class:`ConfigView` gives typed access whose errors
name the full key and the fix; ``fedcloud/core/stack.py`` builds the typed StackConfig from it.
"""

from __future__ import annotations

import contextlib
import difflib
import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

from fedcloud.core.errors import ConfigError
from fedcloud.core.files import load_yaml, short

PROJECT = "fedcloud"
ROOT = Path(__file__).resolve().parents[2]
PROJECT_FILE = ROOT / "Pulumi.yaml"
STACKS_DIR = ROOT / "stacks"

_MISSING: Any = object()
# How much of a value an error message shows.
DESCRIBE_CHARS = 60


def _read_yaml(path: Path) -> Any:
    # strict: bounded, no aliases, no duplicate keys

    return load_yaml(path)


def project_declarations(project_file: Path = PROJECT_FILE) -> dict[str, dict[str, Any]]:
    """Return the ``config:`` declarations of ``Pulumi.yaml`` keyed by bare key name."""
    doc = _read_yaml(project_file) or {}
    decls = doc.get("config") or {}
    out: dict[str, dict[str, Any]] = {}
    for key, decl in decls.items():
        bare = key.split(":", 1)[1] if key.startswith(f"{PROJECT}:") else key
        out[bare] = decl if isinstance(decl, dict) else {"value": decl}
    return out


def project_defaults(project_file: Path = PROJECT_FILE) -> dict[str, Any]:
    """Return the declared default (``default:`` or ``value:``) of every key that has one."""
    out: dict[str, Any] = {}
    for key, decl in project_declarations(project_file).items():
        if "default" in decl:
            out[key] = decl["default"]
        elif "value" in decl:
            out[key] = decl["value"]
    return out


def stack_file(name: str) -> Path:
    """Return the path of ``stacks/Pulumi.<name>.yaml``."""
    return STACKS_DIR / f"Pulumi.{name}.yaml"


def available_stacks() -> list[str]:
    """Return the names of the stacks in ``stacks/``."""
    return sorted(p.name[len("Pulumi.") : -len(".yaml")] for p in STACKS_DIR.glob("Pulumi.*.yaml"))


@dataclass(frozen=True)
class RawConfig:
    """One stack's config values: project defaults overlaid with the stack's own values.

    Attributes:
        stack: Stack name.
        source: Where the values came from (a file path, or ``pulumi config``), for messages.
        values: Bare key (``limits``) to plain Python value.
        provider: Keys of other namespaces (``aws:region``) as written.
    """

    stack: str
    source: str
    values: Mapping[str, Any]
    provider: Mapping[str, Any] = field(default_factory=dict)

    def view(self) -> ConfigView:
        """Return a validating view of the top level."""
        return ConfigView(self.source, f"{PROJECT}:", dict(self.values))

    @property
    def state_dir(self) -> Path:
        """Directory for this stack's state (queues, certificates, runs, registry)."""
        configured = self.values.get("stateDir")
        path = Path(configured) if configured else Path(".fedcloud") / self.stack
        return path if path.is_absolute() else ROOT / path


def _deep_merge(defaults: Mapping[str, Any], values: Mapping[str, Any]) -> dict[str, Any]:
    """Overlay ``values`` on ``defaults``; mappings merge key by key, anything else replaces."""
    out = dict(defaults)
    for key, value in values.items():
        base = out.get(key)
        if isinstance(base, Mapping) and isinstance(value, Mapping):
            out[key] = _deep_merge(base, value)
        else:
            out[key] = value
    return out


def from_mapping(
    stack: str,
    source: str,
    values: Mapping[str, Any],
    provider: Mapping[str, Any] | None = None,
    project_file: Path = PROJECT_FILE,
) -> RawConfig:
    """Build a :class:`RawConfig` from bare keys, checking them against the declarations.

    Declared defaults that are mappings merge key by key with the stack's value, so a stack sets
    only the sub-keys it changes.

    Args:
        stack: Stack name.
        source: Label for error messages.
        values: Bare keys to values as set in the stack (without defaults).
        provider: Other namespaces' keys, passed through.
        project_file: The ``Pulumi.yaml`` that declares the keys.

    Raises:
        ConfigError: A key is not declared in ``Pulumi.yaml``.
    """
    declared = project_declarations(project_file)
    for key in values:
        if key not in declared:
            close = difflib.get_close_matches(key, list(declared), n=1)
            hint = f"did you mean '{PROJECT}:{close[0]}'?" if close else "remove it"
            raise ConfigError(
                f"{source}: unknown key '{PROJECT}:{key}'.",
                f"{hint} (declared keys are listed in Pulumi.yaml).",
            )
    merged = _deep_merge(project_defaults(project_file), values)
    return RawConfig(stack=stack, source=source, values=merged, provider=dict(provider or {}))


def load_stack(name: str | None = None, path: str | Path | None = None) -> RawConfig:
    """Read a stack file (by name from ``stacks/`` or by path) without the Pulumi engine.

    Raises:
        ConfigError: The file is missing, not YAML, or has unknown or secret-only keys.
    """
    if (name is None) == (path is None):
        raise ConfigError("give a stack name or a stack file path, not both or neither.",
                          "use --stack NAME or --config PATH.")
    if path is None:
        assert name is not None
        file = stack_file(name)
        if not file.exists():
            close = difflib.get_close_matches(name, available_stacks(), n=1)
            hint = f"did you mean --stack {close[0]}?" if close else (
                f"available stacks: {', '.join(available_stacks()) or 'none'}.")
            raise ConfigError(f"stack '{name}' not found ({file}).", hint)
        stack = name
    else:
        file = Path(path)
        base = file.name
        stack = base[len("Pulumi."):-len(".yaml")] if base.startswith("Pulumi.") else file.stem
    doc = _read_yaml(file)
    if doc is None:
        doc = {}
    if not isinstance(doc, dict):
        raise ConfigError(f"{file}: expected a mapping with a 'config:' key.",
                          "start the file with 'config:'.")
    config = doc.get("config") or {}
    if not isinstance(config, dict):
        raise ConfigError(f"{file}: 'config' must be a mapping of keys to values.",
                          "indent the keys under 'config:'.")
    values: dict[str, Any] = {}
    provider: dict[str, Any] = {}
    for key, value in config.items():
        key = str(key)
        if ":" not in key:
            raise ConfigError(f"{file}: key '{key}' has no namespace.",
                              f"write it as '{PROJECT}:{key}'.")
        namespace, bare = key.split(":", 1)
        if namespace == PROJECT:
            if isinstance(value, dict) and set(value) == {"secure"}:
                raise ConfigError(
                    f"{file}: '{key}' is a Pulumi secret; only the Pulumi CLI can decrypt it.",
                    f"run this stack with 'pulumi up', or set '{key}' in plain text for local use.",
                )
            values[bare] = value
        else:
            provider[key] = value
    return from_mapping(stack, str(file), values, provider)


def _describe(value: Any) -> str:
    """A value as JSON, cut to a short prefix (only the prefix of a long string is looked at)."""
    if isinstance(value, str):
        return short(json.dumps(value[:DESCRIBE_CHARS + 2]), DESCRIBE_CHARS)
    if isinstance(value, Mapping | list):
        return short(f"a {'mapping' if isinstance(value, Mapping) else 'list'} of "
                     f"{len(value)} item(s)", DESCRIBE_CHARS)
    return short(json.dumps(value, default=str), DESCRIBE_CHARS)


class ConfigView:
    """Typed, validating access to one level of a config value.

    Every getter names the full key in its error (``fedcloud:limits.maxLatencyMs``) and says how
    to fix it.
    """

    def __init__(self, source: str, prefix: str, data: Mapping[str, Any]) -> None:
        self.source = source
        self.prefix = prefix
        self.data = data

    def key(self, name: str) -> str:
        """Return the full dotted key name of ``name`` at this level."""
        sep = "" if self.prefix.endswith((":", ".")) or not self.prefix else "."
        return f"{self.prefix}{sep}{name}"

    def error(self, name: str, problem: str, fix: str | None = None) -> ConfigError:
        """Return a :class:`ConfigError` about key ``name`` (not raised)."""
        full = self.key(name)
        return ConfigError(
            f"{self.source}: {full} {problem}.",
            fix or f"set {full} in the stack file (or: pulumi config set --path '{full}' VALUE).",
        )

    def has(self, name: str) -> bool:
        """Return whether ``name`` is set (and not null) at this level."""
        return self.data.get(name) is not None

    def check_keys(self, allowed: Sequence[str]) -> None:
        """Raise on keys not in ``allowed``, with a did-you-mean hint."""
        for key in self.data:
            if key not in allowed:
                close = difflib.get_close_matches(str(key), list(allowed), n=1)
                hint = f"did you mean '{close[0]}'?" if close else (
                    f"allowed keys: {', '.join(allowed)}.")
                raise self.error(str(key), "is not a known key", hint)

    def _get(self, name: str, default: Any) -> Any:
        value = self.data.get(name)
        if value is None:
            if default is _MISSING:
                raise self.error(name, "is required but not set")
            return default
        return value

    def sub(self, name: str, default: Any = _MISSING) -> ConfigView:
        """Return a view of the mapping at ``name``."""
        value = self._get(name, default)
        if not isinstance(value, Mapping):
            raise self.error(name, f"must be a mapping, got {_describe(value)}")
        return ConfigView(self.source, self.key(name), value)

    def items(self, name: str, default: Any = _MISSING) -> list[ConfigView]:
        """Return a view of each mapping in the list at ``name``."""
        value = self.get_list(name, default)
        views = []
        for i, item in enumerate(value):
            if not isinstance(item, Mapping):
                raise self.error(f"{name}[{i}]", f"must be a mapping, got {_describe(item)}")
            views.append(ConfigView(self.source, f"{self.key(name)}[{i}]", item))
        return views

    def get_str(self, name: str, default: Any = _MISSING, choices: Sequence[str] | None = None,
                ) -> str:
        """Return a string, optionally one of ``choices`` (with a did-you-mean hint)."""
        value = self._get(name, default)
        if value is None and default is None:
            # Optional key left unset: callers that pass default=None get None back.
            return cast(str, default)
        if not isinstance(value, str) or not value:
            raise self.error(name, f"must be a non-empty string, got {_describe(value)}")
        if choices is not None and value not in choices:
            close = (difflib.get_close_matches(value, list(choices), n=1)
                     if len(value) <= DESCRIBE_CHARS else [])
            hint = f"did you mean '{close[0]}'?" if close else f"use one of: {', '.join(choices)}."
            raise self.error(name, f"is '{short(value)}', which is not one of {list(choices)}",
                             hint)
        return value

    def get_float(self, name: str, default: Any = _MISSING, minimum: float | None = None,
                  maximum: float | None = None, exclusive_minimum: bool = False) -> float:
        """Return a finite number within the bounds given."""
        value = self._get(name, default)
        if isinstance(value, bool) or not isinstance(value, int | float):
            if isinstance(value, str):
                try:
                    value = float(value)
                except ValueError:
                    raise self.error(name, f"must be a number, got {_describe(value)}") from None
            else:
                raise self.error(name, f"must be a number, got {_describe(value)}")
        value = float(value)
        if not math.isfinite(value):
            raise self.error(name, f"must be finite, got {value}")
        if minimum is not None and (value < minimum or (exclusive_minimum and value == minimum)):
            op = ">" if exclusive_minimum else ">="
            raise self.error(name, f"must be {op} {minimum:g}, got {value:g}")
        if maximum is not None and value > maximum:
            raise self.error(name, f"must be <= {maximum:g}, got {value:g}")
        return value

    def get_int(self, name: str, default: Any = _MISSING, minimum: int | None = None,
                maximum: int | None = None) -> int:
        """Return an integer within the bounds given."""
        value = self._get(name, default)
        if isinstance(value, str) and value.strip().lstrip("-").isdigit():
            value = int(value)
        if isinstance(value, bool) or not isinstance(value, int):
            raise self.error(name, f"must be a whole number, got {_describe(value)}")
        if minimum is not None and value < minimum:
            raise self.error(name, f"must be >= {minimum}, got {value}")
        if maximum is not None and value > maximum:
            raise self.error(name, f"must be <= {maximum}, got {value}")
        return value

    def get_bool(self, name: str, default: Any = _MISSING) -> bool:
        """Return a boolean (YAML true/false, or the strings "true"/"false")."""
        value = self._get(name, default)
        if isinstance(value, str) and value.lower() in ("true", "false"):
            return value.lower() == "true"
        if not isinstance(value, bool):
            raise self.error(name, f"must be true or false, got {_describe(value)}")
        return value

    def get_list(self, name: str, default: Any = _MISSING) -> list[Any]:
        """Return a list (a JSON string holding a list is accepted, as Pulumi stores them)."""
        value = self._get(name, default)
        if isinstance(value, str):
            with contextlib.suppress(json.JSONDecodeError):
                value = json.loads(value)
        if not isinstance(value, list):
            raise self.error(name, f"must be a list, got {_describe(value)}")
        return value

    def get_any(self, name: str, default: Any = _MISSING) -> Any:
        """Return the raw value."""
        return self._get(name, default)
