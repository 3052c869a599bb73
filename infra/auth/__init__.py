"""Cloud Authenticator: link a public cloud from the credential file a user has.

One module per cloud (``aws``, ``gcp``, ``azure``) with the same names (``load``, ``validate``,
``pulumi_config``), and this small dispatcher keyed by cloud name. A cloud is *linked* only when
its real identity call succeeds; the record (identity, time, linked) is the stack's
``auth.json`` in its state directory (mode 0600, written atomically) and holds nothing secret.
The credentials themselves go to Pulumi as secret stack config (:func:`hand_off`), never to disk
in plain text.
"""

from __future__ import annotations

import difflib
import json
import os
import shlex
import shutil
import subprocess
from collections.abc import Iterable
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from types import ModuleType
from typing import Any

from fedcloud.core.config import ROOT
from fedcloud.core.errors import AuthError
from fedcloud.core.files import MIB_BYTES, read_bounded, write_json_atomic
from fedcloud.core.stack import AuthSettings, Endpoints
from infra.auth import aws, azure, gcp
from infra.auth.base import ConfigEntry, Identity

__all__ = [
    "CLOUDS",
    "AuthSettings",
    "ConfigEntry",
    "Endpoints",
    "HandOff",
    "Identity",
    "LinkRecord",
    "hand_off",
    "link",
    "linked_clouds",
    "load_credential",
    "offerable_clouds",
    "read_status",
    "validate",
]

CLOUDS: tuple[str, ...] = ("aws", "gcp", "azure")
STATE_FILE = "auth.json"
STATE_FILE_MAX_BYTES = 1 * MIB_BYTES
PULUMI_TIMEOUT_S = 60.0
_MODULES: dict[str, ModuleType] = {"aws": aws, "gcp": gcp, "azure": azure}

@dataclass(frozen=True)
class LinkRecord:
    """One cloud's entry in ``auth.json`` (nothing secret).

    Attributes:
        cloud: Cloud name.
        linked: Whether the last successful validation made it linked.
        identity: Who the credential is (from the last success), if ever linked.
        checked_at: UTC time of the last successful validation (ISO 8601), if any.
        file: The credential file last linked (a path, not its content).
        last_error: The message of the last failed attempt, if it failed after the last success.
        last_attempt_at: UTC time of the last attempt, successful or not.
    """

    cloud: str
    linked: bool
    identity: Identity | None = None
    checked_at: str | None = None
    file: str | None = None
    last_error: str | None = None
    last_attempt_at: str | None = None


@dataclass(frozen=True)
class HandOff:
    """How the credentials reached Pulumi.

    Attributes:
        ran: True when ``pulumi config set`` ran here; False when the commands are for the user.
        commands: The commands, as shown to the user (secret values never appear in them).
    """

    ran: bool
    commands: tuple[str, ...]


def module(cloud: str) -> ModuleType:
    """Return the authenticator module of ``cloud``.

    Raises:
        AuthError: Unknown cloud, with a did-you-mean hint.
    """
    if cloud not in _MODULES:
        close = difflib.get_close_matches(cloud, CLOUDS, n=1)
        hint = f"did you mean '{close[0]}'?" if close else f"use one of: {', '.join(CLOUDS)}."
        raise AuthError(f"unknown cloud '{cloud}'.", hint)
    return _MODULES[cloud]


def load_credential(cloud: str, path: str | Path, *, profile: str | None = None,
                    subscription: str | None = None) -> Any:
    """Parse a credential file of ``cloud`` (no network).

    Args:
        cloud: ``aws``, ``gcp`` or ``azure``.
        path: The file the user has.
        profile: AWS only: the credentials-file profile, or the user of a multi-user CSV.
        subscription: Azure only: the subscription id.

    Returns:
        The cloud module's credential object (secrets hidden from ``repr``).

    Raises:
        AuthError: Unknown cloud, an option that does not apply, or a malformed file.
    """
    mod = module(cloud)
    if profile is not None and cloud != "aws":
        raise AuthError(f"--profile applies to aws credentials files, not to {cloud}.",
                        "drop --profile.")
    if subscription is not None and cloud != "azure":
        raise AuthError(f"--subscription applies to azure, not to {cloud}.",
                        "drop --subscription" + (" (the project comes from the key file)."
                                                 if cloud == "gcp" else "."))
    return mod.load(Path(path).expanduser(), profile=profile, subscription=subscription)


def validate(cloud: str, credential: Any, settings: AuthSettings) -> Identity:
    """Make the cloud's real identity call with ``credential``.

    Raises:
        AuthError: Which step failed and why.
    """
    identity: Identity = module(cloud).validate(credential, settings)
    return identity


def link(cloud: str, path: str | Path, state_dir: Path, settings: AuthSettings, *,
         profile: str | None = None, subscription: str | None = None,
         ) -> tuple[LinkRecord, Any]:
    """Parse, validate and record a credential; the cloud is linked only if validation passed.

    A failed attempt is recorded as ``last_error`` without unlinking a cloud linked earlier (its
    Pulumi config still holds the earlier, valid credential).

    Args:
        cloud: ``aws``, ``gcp`` or ``azure``.
        path: The credential file.
        state_dir: The stack's state directory (``RawConfig.state_dir``).
        settings: The stack's auth settings.
        profile: AWS profile (see :func:`load_credential`).
        subscription: Azure subscription id.

    Returns:
        The new record and the parsed credential (for :func:`hand_off`).

    Raises:
        AuthError: The file is malformed or the cloud refused it (after recording the failure).
    """
    now = _now()
    file = str(Path(path).expanduser().resolve())
    try:
        credential = load_credential(cloud, path, profile=profile, subscription=subscription)
        identity = validate(cloud, credential, settings)
    except AuthError as exc:
        if cloud in CLOUDS:
            previous = read_status(state_dir).get(cloud) or LinkRecord(cloud=cloud, linked=False)
            _write_record(state_dir, LinkRecord(
                cloud=cloud, linked=previous.linked, identity=previous.identity,
                checked_at=previous.checked_at, file=previous.file, last_error=str(exc),
                last_attempt_at=now))
        raise
    record = LinkRecord(cloud=cloud, linked=True, identity=identity, checked_at=now, file=file,
                        last_attempt_at=now)
    _write_record(state_dir, record)
    return record, credential


def read_status(state_dir: Path) -> dict[str, LinkRecord]:
    """Return the record of every cloud (unlinked ones included), keyed by cloud name.

    Raises:
        AuthError: ``auth.json`` exists but is not a record this module wrote.
    """
    path = Path(state_dir) / STATE_FILE
    out = {cloud: LinkRecord(cloud=cloud, linked=False) for cloud in CLOUDS}
    if not os.path.lexists(path):
        return out
    fix = f"delete {path} and link the clouds again with fedcloud auth add."
    data = read_bounded(path, STATE_FILE_MAX_BYTES, "the auth record", error=AuthError, fix=fix)
    try:
        doc = json.loads(data.decode("utf-8"))
    except (ValueError, RecursionError) as exc:
        raise AuthError(f"{path} is unreadable ({type(exc).__name__}).", fix) from None
    clouds = doc.get("clouds") if isinstance(doc, dict) else None
    if not isinstance(clouds, dict):
        raise AuthError(f"{path} has no 'clouds' mapping.",
                        f"delete {path} and link the clouds again with fedcloud auth add.")
    for cloud, entry in clouds.items():
        if cloud not in out or not isinstance(entry, dict):
            continue
        ident = entry.get("identity")
        try:
            out[cloud] = LinkRecord(
                cloud=cloud, linked=entry.get("linked") is True,
                identity=Identity(**ident) if isinstance(ident, dict) else None,
                checked_at=entry.get("checked_at"), file=entry.get("file"),
                last_error=entry.get("last_error"), last_attempt_at=entry.get("last_attempt_at"))
        except TypeError:
            raise AuthError(f"{path}: the entry of {cloud} is malformed.",
                            f"run fedcloud auth add {cloud} --file ... again.") from None
    return out


def linked_clouds(state_dir: Path) -> set[str]:
    """Return the clouds linked for the stack whose state directory is ``state_dir``.

    For the optimizer: with ``fedcloud:auth.onlyLinked`` it offers only these clouds.
    """
    return {cloud for cloud, rec in read_status(state_dir).items() if rec.linked}


def offerable_clouds(settings: AuthSettings, state_dir: Path, stack: str,
                     clouds: Iterable[str]) -> list[str]:
    """Return ``clouds`` (the stack's ``fedcloud:clouds``) filtered as ``onlyLinked`` asks.

    Args:
        settings: The stack's ``fedcloud:auth``.
        state_dir: The stack's state directory (where links are recorded).
        stack: The stack name, for the message.
        clouds: The clouds the stack allows, in order.

    Returns:
        ``clouds`` unchanged when ``onlyLinked`` is false, else those that are linked.

    Raises:
        AuthError: ``onlyLinked`` is true and none of ``clouds`` is linked.
    """
    wanted = list(clouds)
    if not settings.only_linked:
        return wanted
    linked = linked_clouds(state_dir)
    kept = [c for c in wanted if c in linked]
    if not kept:
        raise AuthError(
            f"stack '{stack}' asks for linked clouds only (fedcloud:auth.onlyLinked) but none "
            f"of {wanted} is linked.",
            f"link one: fedcloud auth add {wanted[0] if wanted else 'aws'} --file PATH "
            f"--stack {stack}, or set fedcloud:auth.onlyLinked to false.")
    return kept


def hand_off(cloud: str, credential: Any, stack: str, *, file: str | Path,
             profile: str | None = None, subscription: str | None = None,
             pulumi: str | None = None) -> HandOff:
    """Put the credential into the stack's Pulumi config (secret values as secrets).

    With the ``pulumi`` CLI on PATH it runs ``pulumi config set [--secret] --stack STACK KEY``
    with each value on stdin (never on a command line, where ``ps`` would show it). Without it,
    it returns the commands for the user: secret values are read by their shell from the file
    (``< key.json``) or piped from ``fedcloud auth secret``, so no secret is printed here.

    Args:
        cloud: Cloud name.
        credential: What :func:`load_credential` returned.
        stack: Pulumi stack name.
        file: The credential file (for the printed commands).
        profile: AWS profile, repeated in the printed commands.
        subscription: Azure subscription, repeated in the printed commands.
        pulumi: The ``pulumi`` executable; default: found on PATH.

    Raises:
        AuthError: ``pulumi config set`` failed (its message, which holds no value).
    """
    entries: list[ConfigEntry] = module(cloud).pulumi_config(credential)
    exe = pulumi or shutil.which("pulumi")
    commands = tuple(_shown(cloud, e, stack, Path(file).expanduser().resolve(), profile,
                            subscription) for e in entries)
    if exe is None:
        return HandOff(ran=False, commands=commands)
    for entry in entries:
        argv = [exe, "config", "set", "--stack", stack, *(["--secret"] if entry.secret else []),
                entry.key]
        try:
            done = subprocess.run(argv, input=entry.value, text=True, capture_output=True,
                                  cwd=ROOT, timeout=PULUMI_TIMEOUT_S, check=False)
        except (OSError, subprocess.TimeoutExpired) as exc:
            raise AuthError(f"{cloud}: the credential is valid and linked, but running "
                            f"'pulumi config set {entry.key}' failed ({type(exc).__name__}).",
                            "run the commands of 'fedcloud auth add' by hand.") from None
        if done.returncode != 0:
            reason = (done.stderr.strip().splitlines() or ["no message"])[-1]
            fix = (f"create the stack first: pulumi stack init {stack}, then run fedcloud auth "
                   "add again." if "no stack" in reason.lower() else
                   "fix the Pulumi problem above, then run fedcloud auth add again.")
            raise AuthError(f"{cloud}: the credential is valid and linked, but 'pulumi config "
                            f"set {entry.key}' failed: {reason}", fix)
    return HandOff(ran=True, commands=commands)


def secret_value(cloud: str, key: str, credential: Any) -> str:
    """Return the value of config ``key`` from a credential (for ``fedcloud auth secret``).

    Raises:
        AuthError: ``key`` is not one of the cloud's config keys.
    """
    entries: list[ConfigEntry] = module(cloud).pulumi_config(credential)
    for entry in entries:
        if entry.key == key:
            return entry.value
    keys = ", ".join(e.key for e in entries)
    raise AuthError(f"{cloud}: no config key '{key}' in this credential.", f"use one of: {keys}.")


def _shown(cloud: str, entry: ConfigEntry, stack: str, file: Path, profile: str | None,
           subscription: str | None) -> str:
    q = shlex.quote
    set_cmd = (f"pulumi config set --stack {q(stack)} {'--secret ' if entry.secret else ''}"
               f"{q(entry.key)}")
    if entry.whole_file:
        return f"{set_cmd} < {q(str(file))}"
    if not entry.secret:
        return f"{set_cmd} {q(entry.value)}"
    options = (f" --profile {q(profile)}" if profile else "") + (
        f" --subscription {q(subscription)}" if subscription else "")
    return (f"fedcloud auth secret {cloud} --file {q(str(file))}{options} --key {q(entry.key)}"
            f" | {set_cmd}")


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


def _write_record(state_dir: Path, record: LinkRecord) -> None:
    """Replace one cloud's entry in ``auth.json`` atomically, mode 0600."""
    state_dir = Path(state_dir)
    state_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    records = read_status(state_dir)
    records[record.cloud] = record
    doc = {"version": 1, "clouds": {c: asdict(r) for c, r in records.items()}}
    write_json_atomic(state_dir / STATE_FILE, doc, mode=0o600)
