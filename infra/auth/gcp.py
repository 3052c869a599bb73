"""GCP: a service-account JSON key, checked by a token grant and a read of its project.

Validation is two steps with google-auth: (1) an OAuth 2.0 access token from the key's own
``token_uri`` (a JWT signed with the key's private key: Google refuses a deleted or disabled key
here); (2) ``GET /v3/projects/{project_id}`` on Cloud Resource Manager with that token (needs
``resourcemanager.projects.get``, e.g. ``roles/browser``).

The token is fetched with ``credentials.refresh()`` and the project read with a plain bearer
request, not through ``AuthorizedSession``: since google-auth 2.4x an authorized request may
start a background "regional access boundary" lookup at ``iamcredentials.googleapis.com``, a
host this command has no reason to contact.
"""

from __future__ import annotations

import functools
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fedcloud.core.errors import AuthError
from fedcloud.core.stack import AuthSettings
from infra.auth.base import (
    ConfigEntry,
    Identity,
    check_url,
    load_json,
    read_text,
)

CLOUD = "gcp"
SCOPE = "https://www.googleapis.com/auth/cloud-platform.read-only"
_FIX_NEW_KEY = ("create a key: gcloud iam service-accounts keys create key.json "
                "--iam-account SA_EMAIL, and pass key.json to --file")
_REQUIRED = ("project_id", "private_key_id", "private_key", "client_email", "token_uri")
_KIND = re.compile(r"^[a-z_]{1,40}$")  # a 'type' shown in a message must look like one


@dataclass(frozen=True)
class GcpCredential:
    """A service-account key (the whole JSON is the secret, kept out of ``repr``).

    Attributes:
        path: The key file.
        project_id: The key's project.
        client_email: The service account.
        token_uri: The key's token endpoint.
        universe_domain: ``googleapis.com`` unless the key says otherwise.
        info: The parsed key.
        text: The file's text, as handed to Pulumi (``gcp:credentials``).
    """

    path: Path
    project_id: str
    client_email: str
    token_uri: str
    universe_domain: str
    info: dict[str, Any] = field(repr=False)
    text: str = field(repr=False)

    @property
    def label(self) -> str:
        """Non-secret description."""
        return f"service account {self.client_email}"


def load(path: Path, *, profile: str | None = None, subscription: str | None = None,
         ) -> GcpCredential:
    """Parse a service-account JSON key.

    Args:
        path: The key file.
        profile: Not used by GCP (the dispatcher rejects it).
        subscription: Not used by GCP (the dispatcher rejects it).

    Raises:
        AuthError: Not JSON, not a service-account key, a missing field or an unreadable
            private key; names the file, the field and the fix.
    """
    text = read_text(CLOUD, path, "a service-account JSON key", _FIX_NEW_KEY)
    info = load_json(CLOUD, path, text, _FIX_NEW_KEY + " (download it again; do not edit it).")
    kind = info.get("type")
    if kind != "service_account":
        what = {
            "authorized_user": "a user login (gcloud auth application-default login)",
            "external_account": "a workload identity federation configuration",
            "impersonated_service_account": "an impersonation configuration",
        }.get(str(kind), f"of type '{kind}'" if isinstance(kind, str) and _KIND.match(kind)
              else "of an unknown type")
        raise AuthError(f"gcp: {path} is {what}, not a service-account key "
                        "('type': 'service_account').", _FIX_NEW_KEY + ".")
    missing = [k for k in _REQUIRED if not isinstance(info.get(k), str) or not info.get(k)]
    if missing:
        raise AuthError(f"gcp: {path} lacks the field(s) {', '.join(missing)} of a service-account "
                        "key.", _FIX_NEW_KEY + " (the file may be truncated or edited).")
    token_uri = check_url(f"'token_uri' in {path}", info["token_uri"], echo=False)
    _credentials(info, path)  # parse the private key now: a bad key is a format error
    return GcpCredential(path=path, project_id=info["project_id"],
                         client_email=info["client_email"], token_uri=token_uri,
                         universe_domain=str(info.get("universe_domain") or "googleapis.com"),
                         info=info, text=text)


def _credentials(info: dict[str, Any], path: Path) -> Any:
    from google.oauth2 import service_account

    try:
        return service_account.Credentials.from_service_account_info(info, scopes=[SCOPE])
    except (ValueError, TypeError) as exc:
        # The message of cryptography's loader names no key material.
        raise AuthError(f"gcp: the private_key in {path} is not a readable PEM private key "
                        f"({type(exc).__name__}).", _FIX_NEW_KEY + ".") from None


def validate(credential: GcpCredential, settings: AuthSettings) -> Identity:
    """Get a token from the key's token endpoint, then read the key's project.

    Args:
        credential: The parsed key.
        settings: Timeout and endpoint override (``endpoints.gcp_resource_manager``).

    Returns:
        The service account and the project id (with its display name).

    Raises:
        AuthError: Which step failed (token grant or project read) and why.
    """
    import google.auth.exceptions
    import google.auth.transport.requests
    import requests

    timeout = settings.timeout_s
    base = settings.endpoints.gcp_resource_manager
    crm = check_url("fedcloud:auth.endpoints.gcpResourceManager", base) if base else (
        f"https://cloudresourcemanager.{credential.universe_domain}")
    creds = _credentials(credential.info, credential.path)
    step = f"gcp: token grant at {credential.token_uri} for {credential.label}"
    with requests.Session() as session:
        request = google.auth.transport.requests.Request(session)
        try:
            creds.refresh(functools.partial(request, timeout=timeout))
        except google.auth.exceptions.RefreshError as exc:
            why, fix = _token_refusal(exc, credential)
            raise AuthError(f"{step} failed: key rejected, {why}.", fix) from None
        except google.auth.exceptions.TransportError as exc:
            raise _network_error(step, exc, timeout) from None
        step = f"gcp: read of project {credential.project_id} at {crm} as {credential.label}"
        url = f"{crm}/v3/projects/{credential.project_id}"
        try:
            reply = session.get(url, headers={"Authorization": f"Bearer {creds.token}"},
                                timeout=(timeout, timeout))
        except requests.RequestException as exc:
            raise _network_error(step, exc, timeout) from None
    body = _json(reply)
    if reply.status_code == 200:
        state = body.get("state", "ACTIVE")
        if state != "ACTIVE":
            raise AuthError(f"{step}: the project is {state}.",
                            f"restore it (gcloud projects undelete {credential.project_id}) or "
                            "use a key of an active project.")
        return Identity(cloud=CLOUD, principal=credential.client_email,
                        scope=str(body.get("projectId", credential.project_id)),
                        name=str(body.get("displayName", "")))
    raw_error = body.get("error")
    error: dict[str, Any] = raw_error if isinstance(raw_error, dict) else {}
    message = str(error.get("message", reply.reason))
    if reply.status_code == 403 and _service_disabled(error):
        raise AuthError(f"{step} failed: the Cloud Resource Manager API is disabled in the "
                        "project.", "gcloud services enable cloudresourcemanager.googleapis.com "
                        f"--project {credential.project_id}")
    if reply.status_code in (403, 404):
        raise AuthError(
            f"{step} failed: no permission on the project, or no such project "
            f"({reply.status_code}: {message}).",
            f"gcloud projects add-iam-policy-binding {credential.project_id} "
            f"--member serviceAccount:{credential.client_email} --role roles/browser")
    if reply.status_code == 401:
        raise AuthError(f"{step} failed: the token was refused (401: {message}).",
                        "check the key's universe domain and the resource endpoint.")
    raise AuthError(f"{step} failed: HTTP {reply.status_code}: {message}.",
                    "retry later; if it persists, check the Google Cloud status page.")


def _token_refusal(exc: Exception, credential: GcpCredential) -> tuple[str, str]:
    data = exc.args[1] if len(exc.args) > 1 and isinstance(exc.args[1], dict) else {}
    code = str(data.get("error", ""))
    text = str(data.get("error_description", "")) or str(exc.args[0] if exc.args else exc)
    text = text.rstrip(". ")
    lowered = text.lower()
    if "signature" in lowered:
        why = f"{code}: {text} (the key was deleted, disabled or never belonged to this account)"
        return why, _FIX_NEW_KEY + "."
    if "account not found" in lowered or "disabled" in lowered or code == "disabled_client":
        why = f"{code}: {text} (the service account is deleted or disabled)"
        return why, (f"enable it: gcloud iam service-accounts enable {credential.client_email}, "
                     "or use another account's key.")
    if "iat" in lowered or "exp" in lowered or "timeframe" in lowered:
        return f"{code}: {text}", "set this machine's clock right (NTP) and retry."
    return f"{code or 'refused'}: {text}", _FIX_NEW_KEY + "."


def _service_disabled(error: dict[str, Any]) -> bool:
    details = error.get("details") or []
    reasons = {d.get("reason") for d in details if isinstance(d, dict)}
    return "SERVICE_DISABLED" in reasons or "has not been used" in str(error.get("message", ""))


def _json(reply: Any) -> dict[str, Any]:
    try:
        body = reply.json()
    except ValueError:
        return {}
    return body if isinstance(body, dict) else {}


def _network_error(step: str, exc: BaseException, timeout: float) -> AuthError:
    import requests

    chain: list[BaseException] = [exc]
    while chain[-1].__cause__ is not None or chain[-1].__context__ is not None:
        nxt = chain[-1].__cause__ or chain[-1].__context__
        assert nxt is not None
        chain.append(nxt)
        if len(chain) > 8:
            break
    if any(isinstance(e, requests.Timeout) for e in chain) or "timed out" in str(exc).lower():
        return AuthError(f"{step} failed: network, no answer within {timeout:g} s.",
                         "check the network path (proxy, firewall) and retry; raise "
                         "fedcloud:auth.timeoutS on a slow link.")
    if any(isinstance(e, requests.exceptions.SSLError) for e in chain):
        return AuthError(f"{step} failed: TLS certificate not trusted.",
                         "fix the system CA store, or point REQUESTS_CA_BUNDLE at the CA that "
                         "signs the endpoint.")
    return AuthError(f"{step} failed: network, {type(chain[-1]).__name__}.",
                     "check DNS, proxy and firewall, then retry.")


def pulumi_config(credential: GcpCredential) -> list[ConfigEntry]:
    """Return the ``gcp:`` provider config: the key file (secret) and its project (plain)."""
    return [ConfigEntry("gcp:credentials", credential.text, secret=True, whole_file=True),
            ConfigEntry("gcp:project", credential.project_id, secret=False)]
