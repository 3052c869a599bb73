"""`fedcloud auth add|status|secret`, the linked-clouds record and the hand-off to Pulumi."""

from __future__ import annotations

import json
import os
import pty
import stat
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest
from auth_fixtures import FakeCloud, FakeCloudServer, isolated_env, make_tls

from fedcloud.cli.main import main
from fedcloud.core.config import ROOT
from fedcloud.core.errors import AuthError, ConfigError
from fedcloud.core.stack import load
from infra import auth
from infra.auth import aws


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
    # No pulumi CLI unless a test provides one.
    monkeypatch.setenv("PATH", os.pathsep.join(
        p for p in os.environ.get("PATH", "").split(os.pathsep)
        if not (Path(p) / "pulumi").exists()))


def stack_file(tmp_path: Path, cloud: FakeCloud, only_linked: bool = True) -> Path:
    path = tmp_path / "Pulumi.authtest.yaml"
    path.write_text(textwrap.dedent(f"""\
        config:
          fedcloud:stateDir: {tmp_path / "state"}
          fedcloud:limits: {{maxCost: 100, maxLatencyMs: 300}}
          fedcloud:participants: [{{name: p, location: {{region: "aws:us-east-1"}}}}]
          fedcloud:auth:
            onlyLinked: {str(only_linked).lower()}
            endpoints:
              gcpResourceManager: {cloud.base}
              azureAuthorityHost: {cloud.base}
              azureManagement: {cloud.base}
        """))
    return path


def granted_gcp_key(cloud: FakeCloud, tmp_path: Path) -> Path:
    path = cloud.new_gcp_key(tmp_path)
    info = json.loads(path.read_text())
    cloud.gcp_grants.add((info["client_email"], info["project_id"]))
    return path


def test_add_records_the_link_privately_and_prints_pulumi_commands(
        cloud: FakeCloud, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    stack = stack_file(tmp_path, cloud)
    key = granted_gcp_key(cloud, tmp_path)
    assert main(["auth", "add", "gcp", "--file", str(key), "--config", str(stack)]) == 0
    out = capsys.readouterr().out
    assert ("gcp linked for stack authtest: fedcloud@fl-project-1.iam.gserviceaccount.com on "
            "project fl-project-1 (Federated learning)") in out
    assert f"pulumi config set --stack authtest --secret gcp:credentials < {key}" in out
    assert "pulumi config set --stack authtest gcp:project fl-project-1" in out
    assert "PRIVATE KEY" not in out

    record = tmp_path / "state" / "auth.json"
    assert stat.S_IMODE(record.stat().st_mode) == 0o600
    assert "PRIVATE KEY" not in record.read_text()
    assert not list(record.parent.glob(".auth-*"))  # no temp file left behind
    assert auth.linked_clouds(tmp_path / "state") == {"gcp"}

    cfg = load(path=stack)
    assert auth.offerable_clouds(cfg.auth, cfg.state_dir, cfg.stack,
                                 ["aws", "gcp", "azure"]) == ["gcp"]

    assert main(["auth", "status", "--config", str(stack)]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == "stack authtest: the optimizer offers only linked clouds"
    rows = {line.split()[0]: line.split() for line in lines[2:]}
    assert rows["gcp"][1:4] == ["yes", "fedcloud@fl-project-1.iam.gserviceaccount.com",
                                "project"]
    assert rows["aws"][1] == rows["azure"][1] == "no"


def test_failed_attempt_is_recorded_without_unlinking(
        cloud: FakeCloud, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    stack = stack_file(tmp_path, cloud)
    good, sub = cloud.new_azure_sp(tmp_path)
    assert main(["auth", "add", "azure", "--file", str(good), "--subscription", sub,
                 "--config", str(stack)]) == 0
    doc = json.loads(good.read_text())
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({**doc, "password": "wrong-secret-value"}))
    capsys.readouterr()

    code = main(["auth", "add", "azure", "--file", str(bad), "--subscription", sub,
                 "--config", str(stack)])
    err = capsys.readouterr().err
    assert code == AuthError.exit_code
    assert err.startswith("fedcloud: error: azure: token from") and err.count("\n") == 1
    assert "AADSTS7000215" in err and "To fix:" in err
    assert "wrong-secret-value" not in err and doc["password"] not in err

    status = auth.read_status(tmp_path / "state")["azure"]
    assert status.linked and status.file == str(good.resolve())
    assert status.last_error is not None and "AADSTS7000215" in status.last_error
    assert doc["password"] not in (tmp_path / "state" / "auth.json").read_text()


def test_first_failure_leaves_the_cloud_unlinked(cloud: FakeCloud, tmp_path: Path) -> None:
    settings = load(path=stack_file(tmp_path, cloud)).auth
    key = cloud.new_gcp_key(tmp_path, register=False)
    with pytest.raises(AuthError, match="Invalid JWT Signature"):
        auth.link("gcp", key, tmp_path / "state", settings)
    assert auth.linked_clouds(tmp_path / "state") == set()
    assert "Invalid JWT Signature" in str(auth.read_status(tmp_path / "state")["gcp"].last_error)


def test_only_linked_without_any_link_says_how_to_link(cloud: FakeCloud, tmp_path: Path) -> None:
    cfg = load(path=stack_file(tmp_path, cloud))
    with pytest.raises(AuthError, match=r"none of \['aws', 'gcp'\] is linked.*fedcloud auth add "
                       r"aws --file PATH --stack authtest"):
        auth.offerable_clouds(cfg.auth, cfg.state_dir, cfg.stack, ["aws", "gcp"])
    relaxed = load(path=stack_file(tmp_path, cloud, only_linked=False))
    assert auth.offerable_clouds(relaxed.auth, relaxed.state_dir, relaxed.stack,
                                 ["aws", "gcp"]) == ["aws", "gcp"]


def test_settings_keep_declared_defaults_and_reject_typos(cloud: FakeCloud,
                                                          tmp_path: Path) -> None:
    settings = load(path=stack_file(tmp_path, cloud)).auth
    assert settings.timeout_s == 15  # not set in the stack: Pulumi.yaml's declared value
    assert settings.endpoints.aws_sts is None
    assert settings.endpoints.gcp_resource_manager == cloud.base
    typo = tmp_path / "Pulumi.typo.yaml"
    typo.write_text(stack_file(tmp_path, cloud).read_text().replace("onlyLinked", "onlyLinkd"))
    with pytest.raises(ConfigError, match=r"fedcloud:auth.onlyLinkd .*did you mean 'onlyLinked'"):
        load(path=typo)


@pytest.mark.parametrize(("argv", "match"), [
    # --profile is for AWS files
    (["gcp", "--profile", "x"], "--profile applies to aws"),
    # --subscription is for Azure
    (["aws", "--subscription", "x"], "--subscription applies to azure"),
])
def test_options_of_another_cloud_are_refused(cloud: FakeCloud, tmp_path: Path,
                                              capsys: pytest.CaptureFixture[str],
                                              argv: list[str], match: str) -> None:
    stack = stack_file(tmp_path, cloud)
    code = main(["auth", "add", argv[0], "--file", str(tmp_path / "f"), *argv[1:],
                 "--config", str(stack)])
    assert code == AuthError.exit_code
    assert match in capsys.readouterr().err


def test_corrupt_record_is_reported(tmp_path: Path) -> None:
    (tmp_path / "auth.json").write_text("{not json")
    with pytest.raises(AuthError, match=r"auth.json is unreadable.*To fix: delete"):
        auth.linked_clouds(tmp_path)


AWS_ID, AWS_SECRET = "AKIAABCDEFGHIJKLMNOP", "Sec/ret+" * 5


def aws_credentials(tmp_path: Path) -> Path:
    path = tmp_path / "credentials"
    path.write_text(f"[fl]\naws_access_key_id = {AWS_ID}\naws_secret_access_key = {AWS_SECRET}\n")
    return path


def test_printed_commands_pipe_secrets_from_the_file(tmp_path: Path,
                                                     capsys: pytest.CaptureFixture[str]) -> None:
    path = aws_credentials(tmp_path)
    handed = auth.hand_off("aws", aws.load(path, profile="fl"), "dev", file=path, profile="fl")
    assert not handed.ran
    assert handed.commands == (
        f"fedcloud auth secret aws --file {path} --profile fl --key aws:accessKey | "
        "pulumi config set --stack dev --secret aws:accessKey",
        f"fedcloud auth secret aws --file {path} --profile fl --key aws:secretKey | "
        "pulumi config set --stack dev --secret aws:secretKey")
    assert not any(AWS_SECRET in c or AWS_ID in c for c in handed.commands)
    # The piped half of a printed command writes exactly the value, without a newline.
    assert main(["auth", "secret", "aws", "--file", str(path), "--profile", "fl",
                 "--key", "aws:secretKey"]) == 0
    assert capsys.readouterr().out == AWS_SECRET


def test_secret_is_never_written_to_a_terminal(tmp_path: Path) -> None:
    path = aws_credentials(tmp_path)
    leader, follower = pty.openpty()
    try:
        done = subprocess.run(
            [sys.executable, "-m", "fedcloud.cli.main", "auth", "secret", "aws", "--file",
             str(path), "--profile", "fl", "--key", "aws:secretKey"],
            stdout=follower, stderr=subprocess.PIPE, text=True, cwd=ROOT, timeout=60,
            check=False)
        os.set_blocking(leader, False)
        try:
            shown = os.read(leader, 4096).decode()
        except BlockingIOError:
            shown = ""
    finally:
        os.close(leader)
        os.close(follower)
    assert done.returncode == AuthError.exit_code
    assert "refusing to print a secret to a terminal" in done.stderr
    assert AWS_SECRET not in shown + done.stderr


RECORDER = """\
#!{python}
import json, sys
with open({log!r}, "a") as out:
    out.write(json.dumps({{"argv": sys.argv[1:], "stdin": sys.stdin.read()}}) + "\\n")
{tail}
"""


def fake_pulumi(tmp_path: Path, tail: str = "") -> tuple[Path, Path]:
    """A stand-in ``pulumi`` that records its argv and stdin (the CLI is not installable here)."""
    log = tmp_path / "pulumi.log"
    exe = tmp_path / "bin" / "pulumi"
    exe.parent.mkdir()
    exe.write_text(RECORDER.format(python=sys.executable, log=str(log), tail=tail))
    exe.chmod(0o700)
    return exe, log


def test_pulumi_on_path_gets_values_on_stdin_never_argv(tmp_path: Path) -> None:
    exe, log = fake_pulumi(tmp_path)
    path = aws_credentials(tmp_path)
    handed = auth.hand_off("aws", aws.load(path, profile="fl"), "dev", file=path, profile="fl",
                           pulumi=str(exe))
    assert handed.ran
    calls = [json.loads(line) for line in log.read_text().splitlines()]
    assert calls == [
        {"argv": ["config", "set", "--stack", "dev", "--secret", "aws:accessKey"],
         "stdin": AWS_ID},
        {"argv": ["config", "set", "--stack", "dev", "--secret", "aws:secretKey"],
         "stdin": AWS_SECRET}]


def test_pulumi_failure_says_how_to_fix(tmp_path: Path) -> None:
    exe, _ = fake_pulumi(tmp_path, tail="sys.stderr.write(\"error: no stack named 'dev' found\\n\")"
                                        "\nsys.exit(255)")
    path = aws_credentials(tmp_path)
    with pytest.raises(AuthError, match=r"valid and linked, but 'pulumi config set "
                       r"aws:accessKey' failed: error: no stack named 'dev' found.*pulumi stack "
                       r"init dev"):
        auth.hand_off("aws", aws.load(path, profile="fl"), "dev", file=path, pulumi=str(exe))
