"""Azure: a service principal with a client secret, checked by a token and a subscription read.

Accepted files: the JSON that ``az ad sp create-for-rbac`` prints (``appId``, ``password``,
``tenant``; the subscription id comes from ``--subscription``), and the older ``--sdk-auth`` JSON
(``clientId``, ``clientSecret``, ``tenantId``, ``subscriptionId`` and the cloud's endpoints).

Validation is two steps: (1) azure-identity's ``ClientSecretCredential`` gets a token for the
management endpoint from Microsoft Entra ID (instance discovery is disabled: the only host
contacted is the authority itself); (2) ``GET /subscriptions/{id}`` on Azure Resource Manager with
that token (needs a role on the subscription, e.g. Reader).
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fedcloud.core.errors import AuthError
from fedcloud.core.files import short
from fedcloud.core.stack import AuthSettings
from infra.auth.base import (
    ConfigEntry,
    Identity,
    check_url,
    load_json,
    read_text,
)

CLOUD = "azure"
PUBLIC_AUTHORITY = "https://login.microsoftonline.com"
PUBLIC_MANAGEMENT = "https://management.azure.com"
API_VERSION = "2022-12-01"  # Microsoft.Resources subscriptions API (GA, current as of 2026-11)
_GUID = re.compile(r"^[0-9a-fA-F]{8}-([0-9a-fA-F]{4}-){3}[0-9a-fA-F]{12}$")
_DOMAIN = re.compile(r"^[A-Za-z0-9-]+(\.[A-Za-z0-9-]+)+$")
_FIX_NEW_SP = ("create one: az ad sp create-for-rbac --name fedcloud --role Contributor --scopes "
               "/subscriptions/SUBSCRIPTION_ID > sp.json, and pass sp.json with --subscription")
_FIX_ROLE = "az role assignment create --assignee {app} --role Reader --scope /subscriptions/{sub}"
# AADSTS codes Microsoft Entra ID returns for a rejected client credential (as of 2026-11).
_AADSTS = {
    "7000215": ("the client secret is wrong", "copy 'password' again from the az output, or "
                "reset it: az ad sp credential reset --id {app}"),
    "7000222": ("the client secret has expired", "reset it: az ad sp credential reset --id {app}"),
    "700016": ("no application with this appId exists in the tenant",
               "check 'appId' and 'tenant' in the file, or " + _FIX_NEW_SP),
    "90002": ("the tenant does not exist", "check 'tenant' in the file (az account show "
              "--query tenantId -o tsv)"),
    "900023": ("the tenant id is malformed", "check 'tenant' in the file"),
    "7000112": ("the application is disabled", "enable the service principal in Entra ID"),
}


@dataclass(frozen=True)
class AzureCredential:
    """A service principal with a client secret (the secret is kept out of ``repr``).

    Attributes:
        path: The file it came from.
        tenant_id: Entra tenant (GUID or domain).
        client_id: The application (client) id.
        client_secret: The secret (``password``).
        subscription_id: The subscription to check and deploy into.
        authority_host: The file's ``activeDirectoryEndpointUrl`` (sdk-auth files), if any.
        management: The file's ``resourceManagerEndpointUrl`` (sdk-auth files), if any.
    """

    path: Path
    tenant_id: str
    client_id: str
    client_secret: str = field(repr=False)
    subscription_id: str = ""
    authority_host: str | None = None
    management: str | None = None

    @property
    def label(self) -> str:
        """Non-secret description."""
        return f"service principal {self.client_id}"


def load(path: Path, *, profile: str | None = None, subscription: str | None = None,
         ) -> AzureCredential:
    """Parse ``az ad sp create-for-rbac`` output (or its ``--sdk-auth`` form).

    Args:
        path: The JSON file.
        profile: Not used by Azure (the dispatcher rejects it).
        subscription: The subscription id; required unless the file carries ``subscriptionId``.

    Raises:
        AuthError: Not JSON, a missing or malformed field, or no subscription id.
    """
    text = read_text(CLOUD, path, "the JSON of az ad sp create-for-rbac", _FIX_NEW_SP)
    info = load_json(CLOUD, path, text, "save the output of az ad sp create-for-rbac unchanged, "
                     "or " + _FIX_NEW_SP + ".")
    sdk_auth = "clientId" in info
    names = (("clientId", "clientSecret", "tenantId") if sdk_auth
             else ("appId", "password", "tenant"))
    if not sdk_auth and "appId" not in info:
        raise AuthError(f"azure: {path} has neither 'appId' (az ad sp create-for-rbac) nor "
                        "'clientId' (--sdk-auth).", _FIX_NEW_SP + ".")
    if not sdk_auth and info.get("password") is None and "fileWithCertAndPrivateKey" in info:
        raise AuthError(f"azure: {path} is a certificate-based service principal; fedcloud "
                        "needs a client secret.", _FIX_NEW_SP + " (without --cert).")
    values = {}
    for name in names:
        value = info.get(name)
        if not isinstance(value, str) or not value.strip():
            raise AuthError(f"azure: {path} has no '{name}'.",
                            "use the complete output of az ad sp create-for-rbac, or "
                            f"{_FIX_NEW_SP}.")
        values[name] = value.strip()
    client_id, secret, tenant = (values[n] for n in names)
    # A value that fails its check is not shown: it may be the secret in the wrong field.
    if not _GUID.match(client_id):
        raise AuthError(f"azure: '{names[0]}' in {path} is not a GUID ({len(client_id)} "
                        "characters).", "copy appId from the az output unchanged.")
    if not (_GUID.match(tenant) or _DOMAIN.match(tenant)):
        raise AuthError(f"azure: '{names[2]}' in {path} is neither a GUID nor a domain "
                        f"({len(tenant)} characters).", "az account show --query tenantId -o tsv")
    sub = (subscription or str(info.get("subscriptionId") or "")).strip()
    if not sub:
        raise AuthError(f"azure: no subscription id for {path}.",
                        "pass --subscription ID (az account show --query id -o tsv).")
    if not _GUID.match(sub):
        where = (f"subscription id '{short(sub)}'" if subscription else
                 f"'subscriptionId' in {path} ({len(sub)} characters)")
        raise AuthError(f"azure: {where} is not a GUID.",
                        "pass --subscription with the id from az account show --query id -o tsv.")
    authority = info.get("activeDirectoryEndpointUrl") if sdk_auth else None
    management = info.get("resourceManagerEndpointUrl") if sdk_auth else None
    return AzureCredential(
        path=path, tenant_id=tenant, client_id=client_id, client_secret=secret,
        subscription_id=sub,
        authority_host=check_url(f"'activeDirectoryEndpointUrl' in {path}", authority,
                                 echo=False) if authority else None,
        management=check_url(f"'resourceManagerEndpointUrl' in {path}", management,
                             echo=False) if management else None,
    )


def validate(credential: AzureCredential, settings: AuthSettings) -> Identity:
    """Get a management token for the service principal, then read the subscription.

    Args:
        credential: The parsed service principal.
        settings: Timeout and endpoint overrides (``azure_authority_host``,
            ``azure_management``); otherwise the file's endpoints, else the public cloud's.

    Returns:
        The app id and the subscription id (with its display name).

    Raises:
        AuthError: Which step failed (token or subscription read) and why.
    """
    import requests
    from azure.core.exceptions import (
        ClientAuthenticationError,
        ServiceRequestError,
        ServiceResponseError,
    )
    from azure.identity import ClientSecretCredential

    # azure-identity logs each failed get_token as a warning; the AuthError below says it once.
    logging.getLogger("azure.identity").setLevel(logging.ERROR)
    ep = settings.endpoints
    authority = (check_url("fedcloud:auth.endpoints.azureAuthorityHost", ep.azure_authority_host)
                 if ep.azure_authority_host else credential.authority_host or PUBLIC_AUTHORITY)
    management = (check_url("fedcloud:auth.endpoints.azureManagement", ep.azure_management)
                  if ep.azure_management else credential.management or PUBLIC_MANAGEMENT)
    timeout = settings.timeout_s
    sub = credential.subscription_id
    step = f"azure: token from {authority} for {credential.label}"
    try:
        identity = ClientSecretCredential(
            credential.tenant_id, credential.client_id, credential.client_secret,
            authority=authority,
            # No discovery call to login.microsoftonline.com: talk to the authority only.
            disable_instance_discovery=True,
            connection_timeout=timeout, read_timeout=timeout, retry_total=0,
        )
        token = identity.get_token(f"{management}/.default").token
    except ClientAuthenticationError as exc:
        raise _token_refusal(step, exc, credential, timeout) from None
    except (ServiceRequestError, ServiceResponseError) as exc:
        raise _network(step, exc, timeout) from None
    except ValueError as exc:  # MSAL: the authority's metadata could not be read
        raise AuthError(f"{step} failed: {str(exc).splitlines()[0]}",
                        "check 'tenant' in the file and the authority host.") from None
    step = f"azure: read of subscription {sub} at {management} as {credential.label}"
    try:
        reply = requests.get(f"{management}/subscriptions/{sub}",
                             params={"api-version": API_VERSION},
                             headers={"Authorization": f"Bearer {token}"},
                             timeout=(timeout, timeout))
    except requests.RequestException as exc:
        raise _network(step, exc, timeout) from None
    return _subscription_identity(step, reply, credential)


def _subscription_identity(step: str, reply: Any, credential: AzureCredential) -> Identity:
    """Return the identity from ARM's answer to ``GET /subscriptions/{id}``, or raise why not."""
    sub = credential.subscription_id
    try:
        body = reply.json()
    except ValueError:
        body = {}
    body = body if isinstance(body, dict) else {}
    if reply.status_code == 200:
        state = str(body.get("state", "Enabled"))
        if state not in ("Enabled", "Warned", "PastDue"):
            raise AuthError(f"{step}: the subscription is {state}.",
                            "re-enable it in the Azure portal (Subscriptions) or use another one.")
        return Identity(cloud=CLOUD, principal=credential.client_id,
                        scope=str(body.get("subscriptionId", sub)),
                        name=str(body.get("displayName", "")))
    raw_error = body.get("error")
    error: dict[str, Any] = raw_error if isinstance(raw_error, dict) else {}
    code = str(error.get("code", reply.reason))
    message = str(error.get("message", "")).split(". ")[0]
    fix = _FIX_ROLE.format(app=credential.client_id, sub=sub)
    if reply.status_code == 403 or code == "AuthorizationFailed":
        raise AuthError(f"{step} failed: no permission on the subscription ({code}).", fix)
    if reply.status_code == 404 or code == "SubscriptionNotFound":
        raise AuthError(f"{step} failed: the subscription was not found, or the service "
                        f"principal has no role on it ({code}).",
                        f"check --subscription, then {fix}")
    if reply.status_code == 401:
        raise AuthError(f"{step} failed: the token was refused ({code}: {message}).",
                        "check that the subscription belongs to the tenant in the file.")
    raise AuthError(f"{step} failed: HTTP {reply.status_code} {code}: {message}.",
                    "retry later; if it persists, check the Azure status page.")


def _token_refusal(step: str, exc: Any, credential: AzureCredential, timeout: float,
                   ) -> AuthError:
    text = str(getattr(exc, "message", "") or exc)
    if "timed out" in text.lower() or "timeout" in text.lower():
        return _network(step, exc, timeout)
    if "unable to get authority configuration" in text.lower():
        return AuthError(f"{step} failed: the tenant's OpenID metadata could not be read (unknown "
                         f"tenant {credential.tenant_id}, or a wrong authority host).",
                         "check 'tenant' in the file (az account show --query tenantId -o tsv) "
                         "and fedcloud:auth.endpoints.azureAuthorityHost.")
    match = re.search(r"AADSTS(\d+)", text)
    if match and match.group(1) in _AADSTS:
        why, fix = _AADSTS[match.group(1)]
        return AuthError(f"{step} failed: credential rejected, {why} (AADSTS{match.group(1)}).",
                         fix.format(app=credential.client_id) + ".")
    first = next((line.strip() for line in text.splitlines() if "AADSTS" in line),
                 text.splitlines()[0] if text else type(exc).__name__)
    return AuthError(f"{step} failed: credential rejected: {first[:300]}",
                     "check appId, password and tenant in the file, or " + _FIX_NEW_SP + ".")


def _network(step: str, exc: BaseException, timeout: float) -> AuthError:
    text = f"{type(exc).__name__}: {exc}".lower()
    if "timeout" in text or "timed out" in text:
        return AuthError(f"{step} failed: network, no answer within {timeout:g} s.",
                         "check the network path (proxy, firewall) and retry; raise "
                         "fedcloud:auth.timeoutS on a slow link.")
    if "certificate" in text or "ssl" in text:
        return AuthError(f"{step} failed: TLS certificate not trusted.",
                         "fix the system CA store, or point REQUESTS_CA_BUNDLE at the CA that "
                         "signs the endpoint.")
    return AuthError(f"{step} failed: network, {type(exc).__name__}.",
                     "check DNS, proxy and firewall, then retry.")


def pulumi_config(credential: AzureCredential) -> list[ConfigEntry]:
    """Return the ``azure-native:`` provider config; only the client secret is a secret."""
    return [
        ConfigEntry("azure-native:clientId", credential.client_id, secret=False),
        ConfigEntry("azure-native:clientSecret", credential.client_secret, secret=True),
        ConfigEntry("azure-native:tenantId", credential.tenant_id, secret=False),
        ConfigEntry("azure-native:subscriptionId", credential.subscription_id, secret=False),
    ]
