"""GCP authenticator: google-auth's token grant and a CRM project read against local HTTPS."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from auth_fixtures import BlackHole, FakeCloud, FakeCloudServer, isolated_env, make_tls

from fedcloud.core.errors import AuthError
from fedcloud.core.stack import AuthSettings, Endpoints
from infra.auth import gcp


@pytest.fixture(scope="module")
def tls(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, Path]:
    return make_tls(tmp_path_factory.mktemp("tls"))


@pytest.fixture(scope="module")
def cloud(tls: tuple[Path, Path, Path]) -> Iterator[FakeCloud]:
    with FakeCloudServer(tls[1], tls[2]) as fake:
        fake.gcp_projects["fl-project-1"] = "Federated learning"
        yield fake


@pytest.fixture(autouse=True)
def _isolated(monkeypatch: pytest.MonkeyPatch, tmp_path: Path,
              tls: tuple[Path, Path, Path]) -> None:
    isolated_env(monkeypatch, tls[0], tmp_path)


def settings(crm: str, timeout_s: float = 5.0) -> AuthSettings:
    return AuthSettings(only_linked=False, timeout_s=timeout_s,
                        endpoints=Endpoints(gcp_resource_manager=crm))


def granted_key(cloud: FakeCloud, tmp_path: Path, **kwargs: Any) -> Path:
    path = cloud.new_gcp_key(tmp_path, **kwargs)
    info = json.loads(path.read_text())
    cloud.gcp_grants.add((info["client_email"], info["project_id"]))
    return path


def test_service_account_key_links_the_project(cloud: FakeCloud, tmp_path: Path) -> None:
    path = granted_key(cloud, tmp_path)
    credential = gcp.load(path)
    before = len(cloud.log)
    identity = gcp.validate(credential, settings(cloud.base))
    assert identity.principal == "fedcloud@fl-project-1.iam.gserviceaccount.com"
    assert (identity.scope, identity.name) == ("fl-project-1", "Federated learning")
    # Exactly the two steps, in order: the token grant, then the project read.
    assert cloud.log[before:] == [("POST", "/token"), ("GET", "/v3/projects/fl-project-1")]
    assert "PRIVATE KEY" not in repr(credential)


def _key(tmp_path: Path, **changes: object) -> str:
    base: dict[str, object] = {
        "type": "service_account", "project_id": "p", "private_key_id": "k",
        "private_key": "-----BEGIN PRIVATE KEY-----\nnot a key\n-----END PRIVATE KEY-----\n",
        "client_email": "sa@p.iam.gserviceaccount.com",
        "token_uri": "https://oauth2.googleapis.com/token"}
    base.update(changes)
    return json.dumps({k: v for k, v in base.items() if v is not None})


MALFORMED = [
    # not JSON at all (a P12 key saved as text, a truncated download)
    ("{\"type\": \"service_account\",", r"is not JSON \(line 1"),
    # a JSON list
    ("[]", "is JSON but not an object"),
    # a user's application-default login, not a service account
    (json.dumps({"type": "authorized_user", "client_id": "x", "refresh_token": "y"}),
     "is a user login"),
    # workload identity federation config
    (json.dumps({"type": "external_account", "audience": "x"}), "workload identity federation"),
    # a key without its private key
    ("MISSING_PRIVATE_KEY", "lacks the field.* private_key"),
    # an unreadable PEM
    ("BAD_PEM", "is not a readable PEM private key"),
    # a token endpoint over plain http to a non-loopback host
    ("HTTP_TOKEN_URI", "plain http would send credentials in clear"),
]


@pytest.mark.parametrize(("text", "match"), MALFORMED)
def test_malformed_keys_say_what_and_how_to_fix(tmp_path: Path, text: str, match: str) -> None:
    text = {"MISSING_PRIVATE_KEY": _key(tmp_path, private_key=None),
            "BAD_PEM": _key(tmp_path),
            "HTTP_TOKEN_URI": _key(tmp_path, token_uri="http://oauth2.example.com/token"),
            }.get(text, text)
    path = tmp_path / "key.json"
    path.write_text(text)
    with pytest.raises(AuthError, match=match) as info:
        gcp.load(path)
    assert "To fix:" in str(info.value)
    assert "not a key" not in str(info.value)


def test_deleted_key_is_rejected_at_the_token_step(cloud: FakeCloud, tmp_path: Path) -> None:
    # Google no longer knows the key id: the JWT signature cannot be checked.
    path = cloud.new_gcp_key(tmp_path, register=False)
    with pytest.raises(AuthError, match=r"token grant .* failed: key rejected, invalid_grant: "
                       r"Invalid JWT Signature \(the key was deleted"):
        gcp.validate(gcp.load(path), settings(cloud.base))


def test_key_signed_by_another_private_key_is_rejected(cloud: FakeCloud, tmp_path: Path) -> None:
    good = json.loads(granted_key(cloud, tmp_path).read_text())
    other = json.loads(cloud.new_gcp_key(tmp_path, register=False).read_text())
    forged = tmp_path / "forged.json"
    forged.write_text(json.dumps({**good, "private_key": other["private_key"]}))
    with pytest.raises(AuthError, match="Invalid JWT Signature"):
        gcp.validate(gcp.load(forged), settings(cloud.base))


def test_no_permission_on_the_project(cloud: FakeCloud, tmp_path: Path) -> None:
    # A valid key of an account without a role on the project.
    path = cloud.new_gcp_key(tmp_path, email="norole@fl-project-1.iam.gserviceaccount.com")
    with pytest.raises(AuthError, match=r"read of project fl-project-1 .* failed: no permission "
                       r"on the project.*add-iam-policy-binding fl-project-1 --member "
                       r"serviceAccount:norole@fl-project-1"):
        gcp.validate(gcp.load(path), settings(cloud.base))


def test_disabled_resource_manager_api_says_enable_it(cloud: FakeCloud, tmp_path: Path) -> None:
    cloud.gcp_projects["fl-project-2"] = "two"
    cloud.gcp_api_disabled.add("fl-project-2")
    path = granted_key(cloud, tmp_path, project="fl-project-2")
    with pytest.raises(AuthError, match=r"API is disabled.*gcloud services enable "
                       r"cloudresourcemanager.googleapis.com --project fl-project-2"):
        gcp.validate(gcp.load(path), settings(cloud.base))


@pytest.mark.parametrize("where", [
    # the key's token endpoint never answers
    "token",
    # the token is granted, Cloud Resource Manager never answers
    "project",
])
def test_unanswered_endpoint_is_a_timeout(cloud: FakeCloud, tmp_path: Path, where: str) -> None:
    hole = BlackHole()
    try:
        dead = f"https://127.0.0.1:{hole.port}"
        if where == "token":
            path = granted_key(cloud, tmp_path, token_uri=f"{dead}/token")
            crm, step = cloud.base, "token grant"
        else:
            path = granted_key(cloud, tmp_path)
            crm, step = dead, "read of project"
        with pytest.raises(AuthError, match=rf"{step} .* failed: network, no answer within "
                           r"0\.5 s"):
            gcp.validate(gcp.load(path), settings(crm, 0.5))
    finally:
        hole.close()


def test_untrusted_certificate_is_reported(cloud: FakeCloud, tmp_path: Path,
                                           monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("REQUESTS_CA_BUNDLE")  # the system store does not know the test CA
    path = granted_key(cloud, tmp_path)
    with pytest.raises(AuthError, match="TLS certificate not trusted"):
        gcp.validate(gcp.load(path), settings(cloud.base))


def test_pulumi_config_hands_the_key_file_as_secret(cloud: FakeCloud, tmp_path: Path) -> None:
    path = granted_key(cloud, tmp_path)
    entries = gcp.pulumi_config(gcp.load(path))
    assert [(e.key, e.secret, e.whole_file) for e in entries] == [
        ("gcp:credentials", True, True), ("gcp:project", False, False)]
    assert entries[0].value == path.read_text()


def test_default_endpoint_is_googles_and_cannot_leak_from_tests(cloud: FakeCloud,
                                                                 tmp_path: Path) -> None:
    # Without an override the project read goes to cloudresourcemanager.googleapis.com; the
    # tests' dead proxy turns that into a network failure instead of traffic to Google.
    path = granted_key(cloud, tmp_path)
    with pytest.raises(AuthError, match=r"read of project fl-project-1 at "
                       r"https://cloudresourcemanager\.googleapis\.com .* failed: network"):
        gcp.validate(gcp.load(path), AuthSettings(only_linked=False, timeout_s=2.0))
