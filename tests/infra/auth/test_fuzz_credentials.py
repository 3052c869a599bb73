"""Property-based fuzzing of the credential parsers (``aws.load``, ``gcp.load``, ``azure.load``).

Parsing only: no validation call, no network. Whatever the file holds (random bytes, JSON or INI
noise, CSVs with shuffled columns, secrets in the wrong fields), a parser either returns a
credential whose ``repr`` holds no secret, or raises the project's own error: one line, shorter
than ``MAX_MESSAGE_CHARS``, within the hypothesis ``deadline``, and holding no 8-character piece
of any secret in the file. Secrets are drawn from an alphabet (upper case, digits, ``/+``) that
no other field of the generated files uses, so a piece of one in a message can only be a leak.
"""

from __future__ import annotations

import csv
import io
import json
import string
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

from fedcloud.core.errors import FedcloudError
from infra.auth import aws, azure, gcp

MAX_MESSAGE_CHARS = 500
DEADLINE_MS = 2000
EXAMPLES_PER_PARSER = 500
WINDOW = 8
FUZZ = settings(max_examples=EXAMPLES_PER_PARSER, deadline=DEADLINE_MS, derandomize=True,
                database=None, print_blob=False,
                phases=[Phase.explicit, Phase.generate, Phase.shrink],
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
SECRET_ALPHABET = string.ascii_uppercase + string.digits + "/+"
PLAIN = string.ascii_lowercase + " ,.-_@=:;#'\"[]\t\n\ré"  # everything that is not a secret
EXAMPLES: dict[str, int] = {}

_RSA = rsa.generate_private_key(public_exponent=65537, key_size=1024)
REAL_PEM = _RSA.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                              serialization.NoEncryption()).decode()
REAL_PEM_BODY = "".join(REAL_PEM.splitlines()[1:-1])


def _no_fixed_text(s: str) -> bool:
    return "AKIA/ASIA" not in s  # the one run of secret-alphabet characters messages contain


aws_secrets = st.text(SECRET_ALPHABET, min_size=40, max_size=40).filter(_no_fixed_text)
secrets = st.text(SECRET_ALPHABET, min_size=WINDOW, max_size=80).filter(_no_fixed_text)
plain = st.text(PLAIN, max_size=30)
key_ids = st.tuples(st.sampled_from(["AKIA", "ASIA"]),
                    st.text(string.ascii_uppercase + string.digits, min_size=16,
                            max_size=16)).map("".join)


@pytest.fixture(scope="module")
def cred_dir(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    start = time.monotonic()
    yield tmp_path_factory.mktemp("fuzz-cred")
    print(f"\ncredential parser fuzz: {sum(EXAMPLES.values())} examples {EXAMPLES} in "
          f"{time.monotonic() - start:.1f} s")


def _pieces(values: list[str]) -> set[str]:
    return {s[i:i + WINDOW] for s in values for i in range(len(s) - WINDOW + 1)}


def check(label: str, path: Path, data: bytes, parse: Callable[[Path], Any],
          secret_values: list[str], hidden: Callable[[Any], list[str | None]]) -> Any:
    """Write ``data``, parse it; assert the one-line, short, secret-free error contract.

    ``secret_values`` are the secrets anywhere in the file (none may reach a message);
    ``hidden`` returns a parsed credential's secret attributes (none may reach its repr).
    """
    EXAMPLES[label] = EXAMPLES.get(label, 0) + 1
    path.write_bytes(data)
    pieces = _pieces(secret_values)
    try:
        credential = parse(path)
    except FedcloudError as exc:
        text = str(exc)
        assert "\n" not in text and "\r" not in text, text[:MAX_MESSAGE_CHARS]
        assert len(text) < MAX_MESSAGE_CHARS, text[:MAX_MESSAGE_CHARS]
        assert "To fix:" in text, text
        leaked = [p for p in pieces if p in text]
        assert not leaked, f"secret piece {leaked[0]!r} in: {text}"
        return exc
    shown = repr(credential)
    assert not [p for p in _pieces([v for v in hidden(credential) if v]) if p in shown], shown
    return credential


# -- AWS ------------------------------------------------------------------------------------

COLUMNS = ["User name", "Password", "Access key ID", "Secret access key", "Console login link"]


@st.composite
def aws_files(draw: st.DrawFn) -> tuple[bytes, list[str], str | None]:
    """Return (file bytes, the secrets in it, --profile)."""
    kind = draw(st.sampled_from(["bytes", "csv", "ini"]))
    profile = draw(st.none() | st.sampled_from(["default", "alice", "prod"]) | plain)
    if kind == "bytes":
        return draw(st.binary(max_size=2000)), [], profile
    found: list[str] = []
    if kind == "csv":
        header = draw(st.permutations(COLUMNS + draw(st.lists(plain, max_size=2))))
        header = header[:draw(st.integers(0, len(header)))]
        rows = []
        for _ in range(draw(st.integers(0, 4))):
            secret = draw(aws_secrets)
            cut = draw(st.sampled_from([40, 40, 20, 0]))
            found.append(secret)
            cells = {"user name": draw(plain | st.just(secret)),
                     "access key id": draw(key_ids | st.just(secret) | plain),
                     "secret access key": draw(st.just(secret[:cut]) | key_ids)}
            rows.append([cells.get(h.lower(), draw(plain)) for h in header])
        buf = io.StringIO()
        csv.writer(buf, lineterminator=draw(st.sampled_from(["\n", "\r\n"]))).writerows(
            [header, *rows])
        text = draw(st.sampled_from(["", "\ufeff"])) + buf.getvalue()
    else:
        lines = []
        for _ in range(draw(st.integers(0, 3))):
            name = draw(st.sampled_from(["default", "profile prod", "prod"]) | plain)
            lines.append(draw(st.sampled_from([f"[{name}]", f"[{name}", name])))
            for _ in range(draw(st.integers(0, 4))):
                option = draw(st.sampled_from(["aws_access_key_id", "aws_secret_access_key",
                                               "aws_session_token", "role_arn", "region"])
                              | plain)
                secret = draw(aws_secrets)
                found.append(secret)
                value = draw(key_ids | st.just(secret) | st.just(secret[:20]) | plain)
                lines.append(f"{option}{draw(st.sampled_from([' = ', '=', ': ', ' ']))}{value}")
        text = "\n".join(lines) + "\n"
    return text.encode("utf-8"), found, profile


@settings(FUZZ)
@given(case=aws_files())
def test_aws_parser(cred_dir: Path, case: tuple[bytes, list[str], str | None]) -> None:
    data, found, profile = case
    check("aws", cred_dir / "aws.csv", data, lambda p: aws.load(p, profile=profile), found,
          lambda c: [c.secret_access_key, c.session_token])


# -- GCP ------------------------------------------------------------------------------------

GCP_FIELDS = ["type", "project_id", "private_key_id", "private_key", "client_email", "token_uri",
              "universe_domain", "client_id"]


@st.composite
def gcp_files(draw: st.DrawFn) -> tuple[bytes, list[str]]:
    kind = draw(st.sampled_from(["bytes", "noise", "key", "key"]))
    if kind == "bytes":
        return draw(st.binary(max_size=2000)), []
    if kind == "noise":
        return draw(st.text(PLAIN + '{}[]:,"0123456789', max_size=300)).encode(), []
    body = draw(secrets)
    pem = draw(st.sampled_from([f"-----BEGIN PRIVATE KEY-----\n{body}\n-----END PRIVATE KEY-----\n",
                                body, "REAL"]))
    found = [REAL_PEM_BODY] if pem == "REAL" else [body]
    pem = REAL_PEM if pem == "REAL" else pem
    values = (st.just(pem) | st.sampled_from(["service_account", "authorized_user",
                                              "https://oauth2.googleapis.com/token",
                                              "http://oauth2.example.com/token",
                                              "http://127.0.0.1:9/token", "googleapis.com"])
              | plain | st.integers() | st.none() | st.lists(plain, max_size=2))
    doc: dict[str, Any] = {"type": "service_account", "project_id": "fl-project",
                           "private_key_id": "abc", "private_key": pem,
                           "client_email": "sa@fl-project.iam.gserviceaccount.com",
                           "token_uri": "https://oauth2.googleapis.com/token"}
    for field in draw(st.lists(st.sampled_from(GCP_FIELDS) | plain, max_size=4)):
        if draw(st.booleans()):
            doc[field] = draw(values)
        else:
            doc.pop(field, None)
    return json.dumps(doc).encode(), found


@settings(FUZZ)
@given(case=gcp_files())
def test_gcp_parser(cred_dir: Path, case: tuple[bytes, list[str]]) -> None:
    data, found = case
    check("gcp", cred_dir / "key.json", data, gcp.load, found,
          lambda c: ["".join(c.info["private_key"].splitlines()[1:-1])])


# -- Azure ----------------------------------------------------------------------------------

AZURE_FIELDS = ["appId", "password", "tenant", "displayName", "clientId", "clientSecret",
                "tenantId", "subscriptionId", "activeDirectoryEndpointUrl",
                "resourceManagerEndpointUrl", "fileWithCertAndPrivateKey"]


@st.composite
def azure_files(draw: st.DrawFn) -> tuple[bytes, list[str], str | None]:
    kind = draw(st.sampled_from(["bytes", "noise", "sp", "sp"]))
    subscription = draw(st.none() | st.uuids().map(str) | plain)
    if kind == "bytes":
        return draw(st.binary(max_size=2000)), [], subscription
    if kind == "noise":
        return draw(st.text(PLAIN + '{}[]:,"0123456789', max_size=300)).encode(), [], subscription
    secret = draw(secrets)
    guid = st.uuids().map(str)
    values = (st.just(secret) | guid | st.sampled_from(["contoso.onmicrosoft.com",
                                                        "https://login.microsoftonline.com",
                                                        "http://login.example.com",
                                                        "https://127.0.0.1:8443/", "https://["])
              | plain | st.integers() | st.none() | st.lists(plain, max_size=2))
    sdk = draw(st.booleans())
    doc: dict[str, Any] = ({"clientId": draw(guid), "clientSecret": secret, "tenantId": draw(guid)}
                           if sdk else {"appId": draw(guid), "password": secret,
                                        "tenant": draw(guid)})
    for field in draw(st.lists(st.sampled_from(AZURE_FIELDS) | plain, max_size=4)):
        if draw(st.booleans()):
            doc[field] = draw(values)
        else:
            doc.pop(field, None)
    return json.dumps(doc).encode(), [secret], subscription


@settings(FUZZ)
@given(case=azure_files())
def test_azure_parser(cred_dir: Path, case: tuple[bytes, list[str], str | None]) -> None:
    data, found, subscription = case
    check("azure", cred_dir / "sp.json", data,
          lambda p: azure.load(p, subscription=subscription), found,
          lambda c: [c.client_secret])
