"""AWS: an IAM access key, from the console's CSV or a shared-credentials profile, checked by STS.

Accepted files:

* the CSV the IAM console downloads when an access key is created (``Access key ID,Secret access
  key``; older downloads also carry ``User name`` and other columns, possibly several users);
* the shared credentials INI (``~/.aws/credentials``) or config file, one named profile
  (``[default]``, ``[name]`` or ``[profile name]``) with static keys and an optional session token.

Validation is STS ``GetCallerIdentity``: it needs no IAM permission (AWS allows it even under an
explicit Deny), so it fails only for a wrong, deleted, inactive or expired key, or the network.
"""

from __future__ import annotations

import configparser
import csv
import difflib
import io
import re
from dataclasses import dataclass, field
from pathlib import Path

from fedcloud.core.errors import AuthError
from fedcloud.core.files import short
from fedcloud.core.stack import AuthSettings
from infra.auth.base import ConfigEntry, Identity, check_url, listing, read_text

CLOUD = "aws"

_KEY_ID = re.compile(r"^(AKIA|ASIA)[A-Z0-9]{16}$")
_SECRET = re.compile(r"^[A-Za-z0-9/+]{40}$")
# IAM user names: up to 64 of letters, digits and +=,.@_- (a secret never goes into a message).
_USER = re.compile(r"^[\w+=,.@-]{1,64}$", re.ASCII)
_FIX_NEW_KEY = ("create an access key in the IAM console (Security credentials > Create access "
                "key) and pass its downloaded CSV to --file")
# STS is a global service; a region is still needed to sign. us-east-1 holds the global endpoint.
_SIGNING_REGION = "us-east-1"


@dataclass(frozen=True)
class AwsCredential:
    """A static IAM access key (the secret parts are kept out of ``repr``).

    Attributes:
        path: The file it came from.
        profile: The profile (INI) or user name (CSV) it was taken from, if any.
        access_key_id: ``AKIA...`` (long-term) or ``ASIA...`` (temporary, with a session token).
        secret_access_key: The secret.
        session_token: The session token of temporary credentials.
    """

    path: Path
    profile: str | None
    access_key_id: str = field(repr=False)
    secret_access_key: str = field(repr=False)
    session_token: str | None = field(default=None, repr=False)

    @property
    def label(self) -> str:
        """Non-secret description: the key id's last four characters and the profile."""
        where = f" (profile {self.profile})" if self.profile else ""
        return f"access key ...{self.access_key_id[-4:]}{where}"


def load(path: Path, *, profile: str | None = None, subscription: str | None = None,
         ) -> AwsCredential:
    """Parse an AWS access-key CSV or a shared credentials/config INI file.

    Args:
        path: The file.
        profile: INI profile name (default ``default``); for a multi-user CSV, the user name.
        subscription: Not used by AWS (the dispatcher rejects it).

    Raises:
        AuthError: The file is neither format, or lacks a usable key; names the file and the fix.
    """
    text = read_text(CLOUD, path, "an access-key CSV or a credentials file", _FIX_NEW_KEY)
    first = next((line.strip() for line in text.splitlines() if line.strip()), "")
    if first.startswith("["):
        key_id, secret, token, used = _from_ini(path, text, profile)
    else:
        key_id, secret, token, used = _from_csv(path, text, profile)
    return _checked(path, used, key_id, secret, token)


def _from_csv(path: Path, text: str, profile: str | None,
              ) -> tuple[str, str, str | None, str | None]:
    try:
        rows = [r for r in csv.reader(io.StringIO(text)) if any(cell.strip() for cell in r)]
    except csv.Error as exc:
        raise AuthError(f"aws: {path} is not a readable CSV ({short(str(exc), 60)}).",
                        _FIX_NEW_KEY + ".") from None
    header = [h.strip().lower() for h in rows[0]] if rows else []
    if "access key id" not in header or "secret access key" not in header:
        raise AuthError(
            f"aws: {path} is neither a shared credentials file (no [profile] section) nor the "
            "console's access-key CSV (no 'Access key ID' and 'Secret access key' columns).",
            _FIX_NEW_KEY + ", or pass ~/.aws/credentials with --profile NAME.")
    records = [dict(zip(header, (c.strip() for c in r), strict=False)) for r in rows[1:]]
    if not records:
        raise AuthError(f"aws: {path} has the CSV header but no access key row.", _FIX_NEW_KEY)
    users = _user_names(records)
    if profile is not None:
        if "user name" not in header:
            raise AuthError(f"aws: --profile {short(profile)} was given but {path} is a one-key "
                            "CSV without a 'User name' column.",
                            "drop --profile for this file (it applies to credentials files).")
        records = [r for r in records if r.get("user name") == profile]
        if not records:
            raise AuthError(f"aws: {path} has no row for user '{short(profile)}'.",
                            f"use one of: {users}.")
    if len(records) > 1:
        raise AuthError(f"aws: {path} holds {len(records)} access keys.",
                        f"choose one with --profile USER (users: {users}).")
    row = records[0]
    user = row.get("user name") or None
    if user is not None and (not _USER.match(user) or _SECRET.match(user)):
        user = None  # not a user name, maybe a misplaced secret: kept out of labels
    return row.get("access key id", ""), row.get("secret access key", ""), None, user


def _user_names(records: list[dict[str, str]]) -> str:
    """List the CSV's user names that look like IAM user names (a cell may hold a secret)."""
    names = [r.get("user name", "") for r in records]
    plausible = [n for n in names if _USER.match(n) and not _SECRET.match(n)]
    hidden = len(names) - len(plausible)
    shown = listing(plausible) or "none readable"
    return shown + (f", plus {hidden} that are not IAM user names" if hidden else "")


def _from_ini(path: Path, text: str, profile: str | None,
              ) -> tuple[str, str, str | None, str | None]:
    parser = configparser.ConfigParser(interpolation=None, default_section="\x00none")
    try:
        parser.read_string(text, source=str(path))
    except configparser.Error as exc:
        # configparser quotes the offending line, which may hold a secret: keep only the kind
        # and the line number.
        kind = type(exc).__name__
        line = getattr(exc, "lineno", None)
        where = f" at line {line}" if isinstance(line, int) else ""
        raise AuthError(f"aws: {path} is not a valid credentials file ({kind}{where}).",
                        "fix the INI syntax: '[profile]' headers and 'key = value' lines, each "
                        "option once per profile.") from None
    name = profile or "default"
    sections = parser.sections()
    section = name if name in sections else f"profile {name}"
    if section not in sections:
        names = [s.removeprefix("profile ") for s in sections]
        close = difflib.get_close_matches(name, names, n=1)
        hint = f"did you mean --profile {short(close[0])}?" if close else (
            f"pass --profile with one of: {listing(names) or 'none (the file has no sections)'}.")
        raise AuthError(f"aws: {path} has no profile '{short(name)}'.", hint)
    values = parser[section]
    key_id = values.get("aws_access_key_id", "").strip()
    secret = values.get("aws_secret_access_key", "").strip()
    token = values.get("aws_session_token", "").strip() or None
    if not key_id or not secret:
        indirect = [k for k in ("role_arn", "source_profile", "sso_session", "sso_start_url",
                                "credential_process", "web_identity_token_file") if k in values]
        if indirect:
            raise AuthError(
                f"aws: profile '{short(name)}' in {path} gets its keys indirectly ({indirect[0]}); "
                "fedcloud needs static keys it can hand to Pulumi.",
                f"{_FIX_NEW_KEY}, or export temporary keys (aws configure export-credentials "
                f"--profile {short(name)} --format process) into a credentials file.")
        missing = "aws_access_key_id" if not key_id else "aws_secret_access_key"
        raise AuthError(f"aws: profile '{short(name)}' in {path} has no {missing}.",
                        f"add '{missing} = ...' under [{short(section)}], or {_FIX_NEW_KEY}.")
    return key_id, secret, token, name


def _checked(path: Path, profile: str | None, key_id: str, secret: str, token: str | None,
             ) -> AwsCredential:
    if not _KEY_ID.match(key_id):
        # Nothing of the value is shown: when columns are swapped it is the secret.
        swapped = (" It has the shape of a secret access key: the columns or keys are swapped."
                   if _SECRET.match(key_id) else "")
        raise AuthError(f"aws: the access key id in {path} ({len(key_id)} characters) is not an "
                        f"AWS access key id (AKIA/ASIA + 16 letters or digits).{swapped}",
                        "check that the columns or keys are not swapped or truncated.")
    if not _SECRET.match(secret):
        raise AuthError(f"aws: the secret access key in {path} is malformed "
                        f"({len(secret)} characters; AWS secrets are 40).",
                        "copy it again from the downloaded CSV, without quotes or spaces.")
    if key_id.startswith("ASIA") and not token:
        raise AuthError(f"aws: {path} holds temporary keys (ASIA...) without a session token.",
                        "add aws_session_token to the profile, or use a long-term AKIA key.")
    return AwsCredential(path=path, profile=profile, access_key_id=key_id,
                         secret_access_key=secret, session_token=token)


_REJECTED = {
    "InvalidClientTokenId": ("AWS does not know this access key id (deleted, or of another "
                             "partition)", _FIX_NEW_KEY),
    "SignatureDoesNotMatch": ("the secret access key does not match the access key id",
                              "copy the secret again from the CSV downloaded with this key, or "
                              + _FIX_NEW_KEY),
    "ExpiredToken": ("the session token has expired",
                     "refresh the temporary credentials, or use a long-term access key"),
    "ExpiredTokenException": ("the session token has expired",
                              "refresh the temporary credentials, or use a long-term access key"),
    "AccessDenied": ("the caller is denied (an organisation policy or an inactive key)",
                     "activate the key in the IAM console or ask the account administrator"),
}


def validate(credential: AwsCredential, settings: AuthSettings) -> Identity:
    """Call STS ``GetCallerIdentity`` with the key.

    Args:
        credential: The parsed key.
        settings: Timeout and endpoint override (``endpoints.aws_sts``).

    Returns:
        The caller's ARN and account id.

    Raises:
        AuthError: Which step failed (``STS GetCallerIdentity``) and why.
    """
    import boto3
    from botocore.config import Config
    from botocore.exceptions import (
        BotoCoreError,
        ClientError,
        ConnectTimeoutError,
        EndpointConnectionError,
        ReadTimeoutError,
    )

    endpoint = settings.endpoints.aws_sts
    if endpoint:
        endpoint = check_url("fedcloud:auth.endpoints.awsSts", endpoint)
    step = f"aws: STS GetCallerIdentity with {credential.label} from {credential.path}"
    timeout = settings.timeout_s
    try:
        session = boto3.session.Session(
            aws_access_key_id=credential.access_key_id,
            aws_secret_access_key=credential.secret_access_key,
            aws_session_token=credential.session_token,
            region_name=_SIGNING_REGION,
        )
        client = session.client(
            "sts", endpoint_url=endpoint,
            config=Config(connect_timeout=timeout, read_timeout=timeout,
                          retries={"total_max_attempts": 1, "mode": "standard"}),
        )
        reply = client.get_caller_identity()
    except ClientError as exc:
        error = exc.response.get("Error", {})
        code = str(error.get("Code", "unknown"))
        why, fix = _REJECTED.get(code, (f"AWS answered {code}: {error.get('Message', '')}",
                                        _FIX_NEW_KEY))
        raise AuthError(f"{step} failed: key rejected, {why}.", fix + ".") from None
    except (ConnectTimeoutError, ReadTimeoutError):
        raise AuthError(f"{step} failed: network, no answer within {timeout:g} s.",
                        "check the network path to STS (proxy, firewall) and retry; raise "
                        "fedcloud:auth.timeoutS on a slow link.") from None
    except EndpointConnectionError as exc:
        raise AuthError(f"{step} failed: network, cannot reach {exc.kwargs.get('endpoint_url')}.",
                        "check DNS, proxy and firewall, then retry.") from None
    except BotoCoreError as exc:
        raise AuthError(f"{step} failed: {type(exc).__name__}: {exc}.",
                        "check the network and the AWS settings in the environment "
                        "(AWS_PROFILE, AWS_CONFIG_FILE), then retry.") from None
    return Identity(cloud=CLOUD, principal=str(reply["Arn"]), scope=str(reply["Account"]),
                    name=str(reply.get("UserId", "")))


def pulumi_config(credential: AwsCredential) -> list[ConfigEntry]:
    """Return the ``aws:`` provider config the Pulumi program needs, every value secret."""
    entries = [ConfigEntry("aws:accessKey", credential.access_key_id),
               ConfigEntry("aws:secretKey", credential.secret_access_key)]
    if credential.session_token:
        entries.append(ConfigEntry("aws:token", credential.session_token))
    return entries
