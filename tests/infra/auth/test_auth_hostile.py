"""Hostile credential files: devices, FIFOs, huge files, secrets in the wrong field.

Every case must end in one short line naming the file and the fix, at once, and no message may
hold any piece of a secret (the swapped-column cases are the ones users actually produce).
"""

from __future__ import annotations

import json
import os
import re
import stat
import time
from pathlib import Path
from typing import Any

import pytest

from fedcloud.core.errors import AuthError
from infra import auth
from infra.auth import aws, azure, gcp
from infra.auth.base import CREDENTIAL_FILE_MAX_BYTES

SECRET = "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY"
KEY_ID = "AKIAIOSFODNN7EXAMPLE"
GUID = "11111111-2222-3333-4444-555555555555"
LOADERS: dict[str, Any] = {"aws": aws.load, "gcp": gcp.load, "azure": azure.load}


def refused(load: Any, path: Path, **kwargs: Any) -> str:
    start = time.monotonic()
    with pytest.raises(AuthError) as info:
        load(path, **kwargs)
    assert time.monotonic() - start < 2
    text = str(info.value)
    assert "\n" not in text and len(text) < 500, text[:600]
    assert "To fix:" in text
    for i in range(len(SECRET) - 3):
        assert SECRET[i:i + 4] not in text, f"a piece of the secret in: {text}"
    return text


def write(tmp_path: Path, name: str, data: str | bytes) -> Path:
    path = tmp_path / name
    path.write_bytes(data.encode() if isinstance(data, str) else data)
    return path


@pytest.mark.timeout(20)
@pytest.mark.parametrize("cloud", ["aws", "gcp", "azure"])
@pytest.mark.parametrize("kind", ["/dev/zero", "fifo", "directory"])
def test_what_is_not_a_regular_file_is_refused_at_once(tmp_path: Path, cloud: str,
                                                       kind: str) -> None:
    path = {"/dev/zero": Path("/dev/zero"), "directory": tmp_path}.get(kind, tmp_path / "p")
    if kind == "fifo":
        os.mkfifo(path)
    text = refused(LOADERS[cloud], path)
    assert text.startswith(f"{cloud}: {path} is ")
    assert "not a credential file" in text


def test_a_60_mb_csv_gets_a_short_error(tmp_path: Path) -> None:
    row = f"user,{KEY_ID},{SECRET}\n"
    path = write(tmp_path, "big.csv", "User name,Access key ID,Secret access key\n"
                 + row * (60_000_000 // len(row)))
    text = refused(aws.load, path)
    assert f"over the {CREDENTIAL_FILE_MAX_BYTES // 1024} KiB limit for a credential file" in text


@pytest.mark.parametrize(("name", "text"), [
    ("swap.csv", f"Access key ID,Secret access key\n{SECRET},{KEY_ID}\n"),
    ("credentials", f"[default]\naws_access_key_id = {SECRET}\naws_secret_access_key = {KEY_ID}\n"),
])
def test_swapped_aws_key_and_secret_show_no_piece_of_the_secret(tmp_path: Path, name: str,
                                                                 text: str) -> None:
    message = refused(aws.load, write(tmp_path, name, text))
    assert "(40 characters)" in message and "swapped" in message


def test_a_secret_in_the_user_name_column_is_not_listed(tmp_path: Path) -> None:
    path = write(tmp_path, "u.csv", "User name,Access key ID,Secret access key\n"
                 f"{SECRET},{KEY_ID},{SECRET}\nbob,{KEY_ID},{SECRET}\n")
    assert "users: bob, plus 1 that are not IAM user names" in refused(aws.load, path)
    one = write(tmp_path, "one.csv", f"User name,Access key ID,Secret access key\n"
                f"{SECRET},{KEY_ID},{SECRET}\n")
    assert aws.load(one).profile is None  # the label would print it


def test_thousands_of_users_or_profiles_are_listed_briefly(tmp_path: Path) -> None:
    csv_path = write(tmp_path, "u.csv", "User name,Access key ID,Secret access key\n" + "".join(
        f"u{i},{KEY_ID},x\n" for i in range(2000)))
    assert "u0, u1, u2, u3, u4 and 1995 more" in refused(aws.load, csv_path)
    ini = write(tmp_path, "credentials", "".join(f"[p{i}]\n" for i in range(3000)))
    assert "p0, p1, p2, p3, p4 and 2995 more" in refused(aws.load, ini)


@pytest.mark.parametrize("text", ['""\n', ",,\n", "\x00AKIA\x00,\x00\n"])
def test_degenerate_csvs_are_refused(tmp_path: Path, text: str) -> None:
    refused(aws.load, write(tmp_path, "k.csv", text))


@pytest.mark.parametrize(("doc", "subscription", "match"), [
    ({"appId": SECRET, "password": GUID, "tenant": "contoso.com"}, GUID,
     r"'appId' in .* is not a GUID \(40 characters\)"),
    ({"appId": GUID, "password": "contoso.com", "tenant": SECRET}, GUID,
     r"'tenant' in .* is neither a GUID nor a domain \(40 characters\)"),
    ({"clientId": GUID, "clientSecret": "x", "tenantId": "contoso.com", "subscriptionId": SECRET},
     None, r"'subscriptionId' in .* \(40 characters\) is not a GUID"),
    ({"clientId": GUID, "clientSecret": "x", "tenantId": "contoso.com", "subscriptionId": GUID,
      "activeDirectoryEndpointUrl": SECRET}, None,
     r"'activeDirectoryEndpointUrl' in .* \(40 characters\) is not an http\(s\) URL"),
    ({"clientId": GUID, "clientSecret": "x", "tenantId": "contoso.com", "subscriptionId": GUID,
      "resourceManagerEndpointUrl": f"http://{SECRET.replace('/', '')}.example"}, None,
     r"to a non-loopback host\): plain http would send credentials in clear"),
])
def test_azure_values_in_the_wrong_field_are_not_echoed(tmp_path: Path, doc: dict[str, str],
                                                        subscription: str | None,
                                                        match: str) -> None:
    text = refused(azure.load, write(tmp_path, "sp.json", json.dumps(doc)),
                   subscription=subscription)
    assert re.search(match, text), text


def _gcp_key(**changes: object) -> str:
    base: dict[str, object] = {
        "type": "service_account", "project_id": "p", "private_key_id": "k",
        "private_key": f"-----BEGIN PRIVATE KEY-----\n{SECRET}\n-----END PRIVATE KEY-----\n",
        "client_email": "sa@p.iam.gserviceaccount.com",
        "token_uri": "https://oauth2.googleapis.com/token"}
    base.update(changes)
    return json.dumps(base)


@pytest.mark.parametrize(("text", "match"), [
    (_gcp_key(token_uri=SECRET), r"'token_uri' in .* \(40 characters\) is not an http\(s\) URL"),
    (_gcp_key(type="-----BEGIN PRIVATE KEY-----" + SECRET), "is of an unknown type"),
    (_gcp_key(type="x" * 60_000), "is of an unknown type"),
    (_gcp_key(), "is not a readable PEM private key"),
    ("[" * 30_000 + "]" * 30_000, "nests JSON arrays or objects too deep"),
    ('{"type": ' + "9" * 5000 + "}", r"is not JSON this program can read \(Exceeds the limit"),
    ('{"type": "service_account", "private_key": "' + SECRET, r"is not JSON \(line 1, column"),
])
def test_gcp_hostile_keys(tmp_path: Path, text: str, match: str) -> None:
    message = refused(gcp.load, write(tmp_path, "key.json", text))
    assert re.search(match, message), message


@pytest.mark.parametrize("cloud", ["gcp", "azure"])
def test_deep_json_is_refused_not_a_recursion_error(tmp_path: Path, cloud: str) -> None:
    text = refused(LOADERS[cloud], write(tmp_path, "k.json", "[" * 30_000 + "]" * 30_000))
    assert "nests JSON arrays or objects too deep" in text


@pytest.mark.timeout(20)
@pytest.mark.parametrize("kind", ["fifo", "directory", "huge"])
def test_a_hostile_auth_record_is_refused(tmp_path: Path, kind: str) -> None:
    path = tmp_path / auth.STATE_FILE
    if kind == "fifo":
        os.mkfifo(path)
    elif kind == "directory":
        path.mkdir()
    else:
        path.write_bytes(b" " * (auth.STATE_FILE_MAX_BYTES + 1))
    with pytest.raises(AuthError, match=r"To fix: delete .*auth\.json and link the clouds again"):
        auth.read_status(tmp_path)


def test_the_auth_record_is_written_private_and_atomically(tmp_path: Path) -> None:
    record = auth.LinkRecord(cloud="aws", linked=False, last_error="x")
    auth._write_record(tmp_path, record)
    path = tmp_path / auth.STATE_FILE
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert [p.name for p in tmp_path.iterdir()] == [auth.STATE_FILE]
    assert auth.read_status(tmp_path)["aws"].last_error == "x"
