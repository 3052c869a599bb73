"""Azure authenticator: azure-identity against a local Entra ID and Resource Manager over TLS."""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from auth_fixtures import BlackHole, FakeCloud, FakeCloudServer, isolated_env, make_tls

from fedcloud.core.errors import AuthError
from fedcloud.core.stack import AuthSettings, Endpoints
from infra.auth import azure


@pytest.fixture(scope="module")
def tls(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, Path]:
    return make_tls(tmp_path_factory.mktemp("tls"))


@pytest.fixture(scope="module")
def cloud(tls: tuple[Path, Path, Path]) -> Iterator[FakeCloud]:
    with FakeCloudServer(tls[1], tls[2]) as fake:
        yield fake


@pytest.fixture(autouse=True)
def _isolated(monkeypatch: pytest.MonkeyPatch, tmp_path: Path,
              tls: tuple[Path, Path, Path]) -> None:
    isolated_env(monkeypatch, tls[0], tmp_path)


def settings(cloud: FakeCloud, timeout_s: float = 5.0, authority: str | None = None,
             ) -> AuthSettings:
    return AuthSettings(only_linked=False, timeout_s=timeout_s, endpoints=Endpoints(
        azure_authority_host=authority or cloud.base, azure_management=cloud.base))


def test_create_for_rbac_output_links_the_subscription(cloud: FakeCloud, tmp_path: Path) -> None:
    path, sub = cloud.new_azure_sp(tmp_path)
    credential = azure.load(path, subscription=sub)
    identity = azure.validate(credential, settings(cloud))
    assert identity.principal == json.loads(path.read_text())["appId"]
    assert (identity.scope, identity.name) == (sub, "FL subscription")
    assert json.loads(path.read_text())["password"] not in repr(credential)


def test_sdk_auth_file_brings_its_own_endpoints(cloud: FakeCloud, tmp_path: Path) -> None:
    # No overrides: the authority and management URLs come from the --sdk-auth file itself.
    path, sub = cloud.new_azure_sp(tmp_path, sdk_auth=True)
    credential = azure.load(path)
    empty = AuthSettings(only_linked=False, timeout_s=5.0)
    before = len(cloud.log)
    assert azure.validate(credential, empty).scope == sub
    tenant = credential.tenant_id
    assert cloud.log[before:] == [
        ("GET", f"/{tenant}/v2.0/.well-known/openid-configuration"),
        ("POST", f"/{tenant}/oauth2/v2.0/token"),
        ("GET", f"/subscriptions/{sub}")]


SUB = str(uuid.uuid4())
GUID = str(uuid.uuid4())
MALFORMED = [
    # not JSON (the az command's table output)
    ("AppId    DisplayName\n-----", SUB, r"is not JSON \(line 1"),
    # no subscription id anywhere
    (json.dumps({"appId": GUID, "password": "p", "tenant": GUID}), None,
     "no subscription id.*pass --subscription ID"),
    # a subscription name instead of its id
    (json.dumps({"appId": GUID, "password": "p", "tenant": GUID}), "Pay-As-You-Go",
     "subscription id 'Pay-As-You-Go' is not a GUID"),
    # the password is missing (the output was cut)
    (json.dumps({"appId": GUID, "tenant": GUID}), SUB, "has no 'password'"),
    # a certificate-based service principal
    (json.dumps({"appId": GUID, "password": None, "tenant": GUID,
                 "fileWithCertAndPrivateKey": "/home/u/tmp.pem"}), SUB, "certificate-based"),
    # a display name where the app id belongs
    (json.dumps({"appId": "fedcloud", "password": "p", "tenant": GUID}), SUB, "not a GUID"),
    # some other JSON
    (json.dumps({"name": "x"}), SUB, "neither 'appId'"),
    # an sdk-auth file whose authority is plain http off loopback
    (json.dumps({"clientId": GUID, "clientSecret": "s", "tenantId": GUID, "subscriptionId": SUB,
                 "activeDirectoryEndpointUrl": "http://login.example.com"}), None,
     "plain http would send credentials in clear"),
]


@pytest.mark.parametrize(("text", "subscription", "match"), MALFORMED)
def test_malformed_files_say_what_and_how_to_fix(tmp_path: Path, text: str,
                                                 subscription: str | None, match: str) -> None:
    path = tmp_path / "sp.json"
    path.write_text(text)
    with pytest.raises(AuthError, match=match) as info:
        azure.load(path, subscription=subscription)
    assert "To fix:" in str(info.value)


@pytest.mark.parametrize(("change", "match"), [
    # a wrong client secret
    ("secret", r"credential rejected, the client secret is wrong \(AADSTS7000215\)"),
    # an expired client secret
    ("expired", r"the client secret has expired \(AADSTS7000222\).*az ad sp credential reset"),
    # an app id the tenant does not know (deleted service principal)
    ("app", r"no application with this appId exists in the tenant \(AADSTS700016\)"),
    # a tenant that does not exist
    ("tenant", "the tenant's OpenID metadata could not be read"),
])
def test_rejected_credentials_fail_at_the_token_step(cloud: FakeCloud, tmp_path: Path,
                                                     change: str, match: str) -> None:
    path, sub = cloud.new_azure_sp(tmp_path)
    doc = json.loads(path.read_text())
    if change == "secret":
        doc["password"] = "not-the-secret"
    elif change == "expired":
        cloud.azure_expired.add((doc["tenant"], doc["appId"]))
    elif change == "app":
        doc["appId"] = str(uuid.uuid4())
    else:
        doc["tenant"] = str(uuid.uuid4())
    path.write_text(json.dumps(doc))
    with pytest.raises(AuthError, match=rf"azure: token from .* failed: .*{match}") as info:
        azure.validate(azure.load(path, subscription=sub), settings(cloud))
    assert doc["password"] not in str(info.value)


def test_no_role_on_the_subscription(cloud: FakeCloud, tmp_path: Path) -> None:
    path, sub = cloud.new_azure_sp(tmp_path, role=False)
    app = json.loads(path.read_text())["appId"]
    with pytest.raises(AuthError, match=rf"read of subscription {sub} .* failed: no permission on "
                       rf"the subscription \(AuthorizationFailed\).*az role assignment create "
                       rf"--assignee {app} --role Reader --scope /subscriptions/{sub}"):
        azure.validate(azure.load(path, subscription=sub), settings(cloud))


def test_unknown_subscription(cloud: FakeCloud, tmp_path: Path) -> None:
    path, sub = cloud.new_azure_sp(tmp_path)
    del cloud.azure_subs[sub]
    with pytest.raises(AuthError, match=r"subscription was not found.*SubscriptionNotFound"):
        azure.validate(azure.load(path, subscription=sub), settings(cloud))


def test_unanswered_authority_is_a_timeout(cloud: FakeCloud, tmp_path: Path) -> None:
    path, sub = cloud.new_azure_sp(tmp_path)
    hole = BlackHole()
    try:
        with pytest.raises(AuthError, match=r"token from .* failed: network, no answer within "
                           r"0\.5 s"):
            azure.validate(azure.load(path, subscription=sub),
                           settings(cloud, 0.5, authority=f"https://127.0.0.1:{hole.port}"))
    finally:
        hole.close()


def test_pulumi_config_marks_only_the_secret(cloud: FakeCloud, tmp_path: Path) -> None:
    path, sub = cloud.new_azure_sp(tmp_path)
    entries = azure.pulumi_config(azure.load(path, subscription=sub))
    assert {e.key: e.secret for e in entries} == {
        "azure-native:clientId": False, "azure-native:clientSecret": True,
        "azure-native:tenantId": False, "azure-native:subscriptionId": False}
