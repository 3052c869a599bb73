"""Types shared by the per-cloud authenticator modules (no cloud SDK imported here).

Each of ``aws.py``, ``gcp.py`` and ``azure.py`` exports the same names: ``CLOUD``,
``load(path, profile=, subscription=)`` that parses the file the user has, ``validate(credential,
settings)`` that makes the cloud's real identity call, and ``pulumi_config(credential)`` that
lists the provider config keys Pulumi needs. Secrets never appear in a ``repr`` or a message:
a value read from a file is echoed only once it has passed its check (an unchecked value may be a
secret pasted into the wrong field), and then cut short.
"""

from __future__ import annotations

import ipaddress
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from fedcloud.core.errors import AuthError
from fedcloud.core.files import KIB_BYTES, read_bounded, short

CREDENTIAL_FILE_MAX_BYTES = 64 * KIB_BYTES
LISTED_NAMES = 5


@dataclass(frozen=True)
class Identity:
    """Who the credential is, as the cloud reported it (nothing secret).

    Attributes:
        cloud: ``aws``, ``gcp`` or ``azure``.
        principal: The caller: IAM ARN, service-account e-mail, or service principal app id.
        scope: What it was checked against: AWS account id, GCP project id, Azure subscription id.
        name: A human label of the scope (project or subscription display name), if any.
    """

    cloud: str
    principal: str
    scope: str
    name: str = ""


@dataclass(frozen=True)
class ConfigEntry:
    """One Pulumi stack config value derived from a credential.

    Attributes:
        key: Provider config key, e.g. ``aws:secretKey``.
        value: The value (kept out of ``repr``).
        secret: Set with ``pulumi config set --secret``.
        whole_file: The value is the credential file itself (so a printed command can read it
            with ``< FILE`` instead of extracting it).
    """

    key: str
    value: str = field(repr=False)
    secret: bool = True
    whole_file: bool = False


def read_text(cloud: str, path: Path, what: str, fix: str) -> str:
    """Read a credential file, with errors that name it and the fix.

    Args:
        cloud: Cloud name for the message.
        path: The file.
        what: What the file should be (for the message).
        fix: How to obtain a correct file.

    Raises:
        AuthError: Missing, unreadable, not a regular file, over
            :data:`CREDENTIAL_FILE_MAX_BYTES`, empty or not UTF-8.
    """
    data = read_bounded(path, CREDENTIAL_FILE_MAX_BYTES, "a credential file", error=AuthError,
                        prefix=f"{cloud}: ")
    try:
        text = data.decode("utf-8-sig")  # the AWS console's CSV starts with a byte-order mark
    except UnicodeDecodeError:
        raise AuthError(f"{cloud}: {path} is not a text file (expected {what}).",
                        fix) from None
    if not text.strip():
        raise AuthError(f"{cloud}: {path} is empty (expected {what}).", fix)
    return text


def load_json(cloud: str, path: Path, text: str, fix: str) -> dict[str, Any]:
    """Parse a credential file's JSON object; errors name the position, never the content.

    Raises:
        AuthError: Not JSON (with line and column), nested too deep, or not an object.
    """
    try:
        info = json.loads(text)
    except json.JSONDecodeError as exc:
        raise AuthError(f"{cloud}: {path} is not JSON (line {exc.lineno}, column {exc.colno}: "
                        f"{exc.msg}).", fix) from None
    except RecursionError:
        raise AuthError(f"{cloud}: {path} nests JSON arrays or objects too deep.", fix) from None
    except ValueError as exc:  # e.g. a number over Python's integer digit limit
        raise AuthError(f"{cloud}: {path} is not JSON this program can read "
                        f"({short(str(exc), 60)}).", fix) from None
    if not isinstance(info, dict):
        raise AuthError(f"{cloud}: {path} is JSON but not an object.", fix)
    return info


def listing(names: list[str], limit: int = LISTED_NAMES) -> str:
    """Return the first ``limit`` names, each cut short, and how many more there are."""
    shown = ", ".join(short(n) for n in names[:limit])
    more = len(names) - limit
    return f"{shown} and {more} more" if more > 0 else shown


def check_url(setting: str, url: str, *, echo: bool = True) -> str:
    """Return ``url`` without a trailing slash if it is https (http only on loopback).

    Credentials and tokens must not cross the network in clear; plain http is accepted only for
    a loopback host, where nothing leaves the machine.

    Args:
        setting: Where the URL comes from, for messages.
        url: The URL.
        echo: Show the URL in messages (cut short). Off for a value from a credential file,
            which might be a secret pasted into the wrong field.

    Raises:
        AuthError: Not a URL, or plain http to a non-loopback host.
    """
    if not isinstance(url, str):
        raise AuthError(f"{setting} is not a string.", f"set {setting} to a URL like "
                        "https://host[:port].")
    shown = f" '{short(url)}'" if echo else ""
    try:
        parsed = urlparse(url)
        host = parsed.hostname or ""
    except ValueError:  # e.g. an unbalanced '[' in the host
        parsed, host = None, ""
    if parsed is None or parsed.scheme not in ("https", "http") or not host:
        raise AuthError(f"{setting}{shown or ' (' + str(len(url)) + ' characters)'} is not an "
                        "http(s) URL.", f"set {setting} to a URL like https://host[:port].")
    if parsed.scheme == "http" and not _is_loopback(host):
        raise AuthError(f"{setting}{shown or ' (to a non-loopback host)'}: plain http would send "
                        "credentials in clear.", f"use https for {setting}.")
    return url.rstrip("/")


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False
