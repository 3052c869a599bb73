"""Types shared by the per-cloud authenticator modules (no cloud SDK imported here).

Each of ``aws.py``, ``gcp.py`` and ``azure.py`` exports the same names: ``CLOUD``,
``load(path, profile=, subscription=)`` that parses the file the user has, ``validate(credential,
settings)`` that makes the cloud's real identity call, and ``pulumi_config(credential)`` that
lists the provider config keys Pulumi needs. Secrets never appear in a ``repr`` or a message.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlparse

from fedcloud.core.errors import AuthError


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
        AuthError: Missing, unreadable, empty or not UTF-8.
    """
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise AuthError(f"{cloud}: credential file {path} not found.",
                        f"check the path given to --file ({fix}).") from None
    except IsADirectoryError:
        raise AuthError(f"{cloud}: {path} is a directory, not {what}.",
                        f"pass the file itself to --file ({fix}).") from None
    except PermissionError:
        raise AuthError(f"{cloud}: credential file {path} is not readable by this user.",
                        f"run as the file's owner or 'chmod u+r {path}'.") from None
    try:
        text = data.decode("utf-8-sig")  # the AWS console's CSV starts with a byte-order mark
    except UnicodeDecodeError:
        raise AuthError(f"{cloud}: {path} is not a text file (expected {what}).",
                        fix) from None
    if not text.strip():
        raise AuthError(f"{cloud}: {path} is empty (expected {what}).", fix)
    return text


def check_url(setting: str, url: str) -> str:
    """Return ``url`` without a trailing slash if it is https (http only on loopback).

    Credentials and tokens must not cross the network in clear; plain http is accepted only for
    a loopback host, where nothing leaves the machine.

    Raises:
        AuthError: Not a URL, or plain http to a non-loopback host.
    """
    parsed = urlparse(url)
    host = parsed.hostname or ""
    if parsed.scheme not in ("https", "http") or not host:
        raise AuthError(f"{setting} is '{url}', not an http(s) URL.",
                        f"set {setting} to a URL like https://host[:port].")
    if parsed.scheme == "http" and not _is_loopback(host):
        raise AuthError(f"{setting} is '{url}': plain http would send credentials in clear.",
                        f"use https for {setting}.")
    return url.rstrip("/")


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False
