"""AWS authenticator against moto's STS server (signatures enforced), no real AWS reachable."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import boto3
import pytest
from auth_fixtures import BlackHole, MotoServer, isolated_env

from fedcloud.core.errors import AuthError
from fedcloud.core.stack import AuthSettings, Endpoints
from infra.auth import aws


@pytest.fixture(scope="module")
def moto() -> Iterator[tuple[MotoServer, dict[str, str]]]:
    # Two unauthenticated calls create the user and its key; every later call must be signed.
    server = MotoServer(unauthenticated=2)
    try:
        iam = boto3.client("iam", endpoint_url=server.url, region_name="us-east-1",
                           aws_access_key_id="AKIAIOSFODNN7EXAMPLE",
                           aws_secret_access_key="wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY")
        iam.create_user(UserName="alice")
        key = iam.create_access_key(UserName="alice")["AccessKey"]
        yield server, {"id": key["AccessKeyId"], "secret": key["SecretAccessKey"]}
    finally:
        server.stop()


@pytest.fixture(autouse=True)
def _isolated(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    isolated_env(monkeypatch, None, tmp_path)


def settings(url: str, timeout_s: float = 5.0) -> AuthSettings:
    return AuthSettings(only_linked=False, timeout_s=timeout_s, endpoints=Endpoints(aws_sts=url))


def write(tmp_path: Path, name: str, text: str) -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


# Each row: a file layout users actually have; {id} and {secret} are the moto key.
ACCEPTED = [
    # the IAM console's download today: BOM, two columns
    ("console.csv", "\ufeffAccess key ID,Secret access key\n{id},{secret}\n", None),
    # an older IAM download: user name and console link columns, CRLF line ends
    ("credentials.csv", "User name,Password,Access key ID,Secret access key,Console login link"
     "\r\nalice,,{id},{secret},https://123456789012.signin.aws.amazon.com/console\r\n", None),
    # a multi-user CSV, the user chosen with --profile
    ("users.csv", "User name,Access key ID,Secret access key\nbob,AKIAZZZZZZZZZZZZZZZZ,"
     + "b" * 40 + "\nalice,{id},{secret}\n", "alice"),
    # ~/.aws/credentials, the default profile
    ("credentials", "[default]\naws_access_key_id = {id}\naws_secret_access_key = {secret}\n",
     None),
    # ~/.aws/credentials, a named profile among others
    ("credentials", "[default]\naws_access_key_id=AKIAZZZZZZZZZZZZZZZZ\naws_secret_access_key="
     + "z" * 40 + "\n\n[fl]\naws_access_key_id={id}\naws_secret_access_key={secret}\n"
     "region = eu-west-1\n", "fl"),
    # ~/.aws/config style section header
    ("config", "[profile fl]\naws_access_key_id = {id}\naws_secret_access_key = {secret}\n",
     "fl"),
]


@pytest.mark.parametrize(("name", "template", "profile"), ACCEPTED)
def test_accepted_formats_link_the_account(moto: tuple[MotoServer, dict[str, str]],
                                           tmp_path: Path, name: str, template: str,
                                           profile: str | None) -> None:
    server, key = moto
    path = write(tmp_path, name, template.format(**key))
    credential = aws.load(path, profile=profile)
    identity = aws.validate(credential, settings(server.url))
    assert identity.principal == "arn:aws:iam::123456789012:user/alice"
    assert identity.scope == "123456789012"
    assert key["secret"] not in repr(credential)


GOOD_ID, GOOD_SECRET = "AKIAABCDEFGHIJKLMNOP", "s" * 40
MALFORMED = [
    # an empty file
    ("empty.csv", "  \n", None, "is empty"),
    # neither format
    ("notes.txt", "my keys are somewhere\n", None, "neither a shared credentials file"),
    # CSV header only
    ("k.csv", "Access key ID,Secret access key\n", None, "no access key row"),
    # columns swapped: the id field holds a secret
    ("k.csv", f"Access key ID,Secret access key\n{GOOD_SECRET},{GOOD_ID}\n", None,
     "is not an AWS access key id"),
    # a truncated secret
    ("k.csv", f"Access key ID,Secret access key\n{GOOD_ID},{GOOD_SECRET[:20]}\n", None,
     r"malformed \(20 characters"),
    # several users and no --profile
    ("k.csv", f"User name,Access key ID,Secret access key\na,{GOOD_ID},{GOOD_SECRET}\n"
     f"b,{GOOD_ID},{GOOD_SECRET}\n", None, "holds 2 access keys"),
    # --profile on a one-key CSV
    ("k.csv", f"Access key ID,Secret access key\n{GOOD_ID},{GOOD_SECRET}\n", "x",
     "without a 'User name' column"),
    # a misspelt profile gets a did-you-mean
    ("credentials", f"[prod]\naws_access_key_id={GOOD_ID}\naws_secret_access_key={GOOD_SECRET}\n",
     "prd", "did you mean --profile prod"),
    # a profile without the secret
    ("credentials", f"[default]\naws_access_key_id={GOOD_ID}\n", None,
     "has no aws_secret_access_key"),
    # a role profile: no static keys to hand to Pulumi
    ("config", "[profile fl]\nrole_arn = arn:aws:iam::1:role/x\nsource_profile = default\n", "fl",
     r"indirectly \(role_arn\)"),
    # temporary keys without their session token
    ("credentials", f"[default]\naws_access_key_id=ASIAABCDEFGHIJKLMNOP\n"
     f"aws_secret_access_key={GOOD_SECRET}\n", None, "without a session token"),
    # a broken INI
    ("credentials", "[default\naws_access_key_id=x\n", None, "not a valid credentials file"),
]


@pytest.mark.parametrize(("name", "text", "profile", "match"), MALFORMED)
def test_malformed_files_say_what_and_how_to_fix(tmp_path: Path, name: str, text: str,
                                                 profile: str | None, match: str) -> None:
    path = write(tmp_path, name, text)
    with pytest.raises(AuthError, match=match) as info:
        aws.load(path, profile=profile)
    assert "To fix:" in str(info.value)
    assert GOOD_SECRET not in str(info.value)


def test_missing_file_names_it(tmp_path: Path) -> None:
    with pytest.raises(AuthError, match=r"aws: .*nope\.csv not found \(a credential file"):
        aws.load(tmp_path / "nope.csv")


@pytest.mark.parametrize(("which", "match"), [
    # a key id AWS never issued (or deleted)
    ("unknown-id", "key rejected, AWS does not know this access key id"),
    # the right id with a wrong secret
    ("wrong-secret", "key rejected, the secret access key does not match"),
])
def test_rejected_keys_fail_at_sts(moto: tuple[MotoServer, dict[str, str]], tmp_path: Path,
                                   which: str, match: str) -> None:
    server, key = moto
    key_id = "AKIA" + "Q" * 16 if which == "unknown-id" else key["id"]
    secret = key["secret"] if which == "unknown-id" else "W" * 40
    path = write(tmp_path, "k.csv", f"Access key ID,Secret access key\n{key_id},{secret}\n")
    with pytest.raises(AuthError, match=f"STS GetCallerIdentity .* failed: {match}") as info:
        aws.validate(aws.load(path), settings(server.url))
    assert secret not in str(info.value)


def test_unanswered_sts_is_a_timeout(moto: tuple[MotoServer, dict[str, str]],
                                     tmp_path: Path) -> None:
    _, key = moto
    hole = BlackHole()
    try:
        path = write(tmp_path, "k.csv",
                     f"Access key ID,Secret access key\n{key['id']},{key['secret']}\n")
        with pytest.raises(AuthError, match=r"failed: network, no answer within 0\.5 s"):
            aws.validate(aws.load(path), settings(f"http://127.0.0.1:{hole.port}", 0.5))
    finally:
        hole.close()


def test_plain_http_endpoint_off_loopback_is_refused(tmp_path: Path) -> None:
    path = write(tmp_path, "k.csv", f"Access key ID,Secret access key\n{GOOD_ID},{GOOD_SECRET}\n")
    with pytest.raises(AuthError, match="plain http would send credentials in clear"):
        aws.validate(aws.load(path), settings("http://sts.example.com"))


def test_pulumi_config_is_all_secret(tmp_path: Path) -> None:
    path = write(tmp_path, "credentials", f"[default]\naws_access_key_id={GOOD_ID}\n"
                 f"aws_secret_access_key={GOOD_SECRET}\naws_session_token=tok\n")
    entries = aws.pulumi_config(aws.load(path))
    assert [(e.key, e.secret) for e in entries] == [
        ("aws:accessKey", True), ("aws:secretKey", True), ("aws:token", True)]
    assert GOOD_SECRET not in repr(entries)
