"""The aggregator's cloud-init (infra/cloudinit.py): installs and launches, nothing else.

Checked with the ecosystems' own tools as well: ``cloud-init schema`` on every cloud stack's user
data, ``systemd-analyze verify`` and ``security`` on the SuperLink unit.
"""

from __future__ import annotations

import re
import shlex
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519
from pulumi_fixtures import CLOUD_STACKS, cloud_of, stack_run, user_data

from fedcloud.core.flower import FLOWER_QUIET_ENV, SUPERLINK_PORT, superlink_argv
from fl.initializer.certs import ensure_deployment_certs
from infra.cloudinit import (
    AGGREGATOR_REGISTRY_DIR,
    ENV_FILE,
    SANDBOX,
    SERVICE,
    STATE_DIR,
    TLS_DIR,
    VENV,
    SshHostKey,
    TlsMaterial,
    cloud_config,
    pinned_requirements,
    superlink_unit,
)

TLS = TlsMaterial(ca_cert="CA-PEM\n", server_cert="CERT-PEM\n", server_key="KEY-PEM\n")
KEY = "ssh-ed25519 AAAATEST operator@test"


def parsed() -> tuple[str, dict[str, Any]]:
    text = cloud_config(TLS, KEY)
    return text, yaml.safe_load(text)


def files(doc: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {f["path"]: f for f in doc["write_files"]}


def unit_lines(doc: dict[str, Any]) -> dict[str, str]:
    unit = files(doc)[f"/etc/systemd/system/{SERVICE}"]["content"]
    out: dict[str, str] = {}
    for line in unit.splitlines():
        if "=" in line:
            key, value = line.split("=", 1)
            out.setdefault(key, value)
    return out


def test_is_cloud_config_yaml() -> None:
    text, doc = parsed()
    assert text.startswith("#cloud-config\n")
    assert isinstance(doc, dict)
    assert doc["packages"] == ["python3-venv"]


def test_unit_runs_exactly_superlink_argv_with_tls_auth_and_database() -> None:
    _, doc = parsed()
    argv = shlex.split(unit_lines(doc)["ExecStart"])
    expected = superlink_argv(database=f"{STATE_DIR}/superlink.db", ca_cert=f"{TLS_DIR}/ca.pem",
                              server_cert=f"{TLS_DIR}/server.pem",
                              server_key=f"{TLS_DIR}/server.key", host="0.0.0.0",
                              port=SUPERLINK_PORT, executable=f"{VENV}/bin/flower-superlink")
    assert argv == expected
    for flag in ("--ssl-ca-certfile", "--ssl-certfile", "--ssl-keyfile",
                 "--enable-supernode-auth", "--database",
                 "--disable-runtime-dependency-installation"):
        assert flag in argv, flag
    assert "--insecure" not in argv
    assert argv[argv.index("--host") + 1] == "0.0.0.0"


def test_flower_never_phones_home_from_the_vm() -> None:
    text, doc = parsed()
    env_file = files(doc)[ENV_FILE]["content"]
    for key, value in FLOWER_QUIET_ENV.items():
        assert f"{key}={value}\n" in env_file
        assert f"export {key}={value}\n" in files(doc)["/etc/profile.d/fedcloud-flower.sh"][
            "content"]
    assert "FLWR_TELEMETRY_ENABLED=0" in text and "FLWR_DISABLE_UPDATE_CHECK=1" in text
    assert unit_lines(doc)["EnvironmentFile"] == ENV_FILE


def test_tls_material_and_permissions() -> None:
    _, doc = parsed()
    written = files(doc)
    assert written[f"{TLS_DIR}/ca.pem"]["content"] == TLS.ca_cert
    assert written[f"{TLS_DIR}/server.pem"]["content"] == TLS.server_cert
    assert written[f"{TLS_DIR}/server.key"]["content"] == TLS.server_key
    assert written[f"{TLS_DIR}/server.key"]["permissions"] == "0600"


def test_installs_the_pinned_flower_and_torch_cpu() -> None:
    _, doc = parsed()
    pins = pinned_requirements()
    assert pins["flwr"].startswith("flwr==1.41")
    installs = [cmd for cmd in doc["runcmd"] if cmd[0] == f"{VENV}/bin/pip"]
    assert any(pins["flwr"] in cmd for cmd in installs)
    torch = next(cmd for cmd in installs if pins["torch"] in cmd)
    assert "https://download.pytorch.org/whl/cpu" in torch
    assert doc["runcmd"][-1] == ["systemctl", "enable", "--now", SERVICE]


def test_operator_login_and_registry_link() -> None:
    _, doc = parsed()
    admin = next(u for u in doc["users"] if isinstance(u, dict) and u["name"] == "fedcloud")
    assert admin["ssh_authorized_keys"] == [KEY]
    assert ["ln", "-sfn", STATE_DIR, "/home/fedcloud/fedcloud-state"] in doc["runcmd"]
    assert any(AGGREGATOR_REGISTRY_DIR in cmd for cmd in doc["runcmd"] if cmd[0] == "mkdir")


# --- the ecosystems' own checks: cloud-init's schema, systemd's verify and security ----------

def tool(name: str, package: str) -> str:
    """The path of a Debian-packaged checker; fails (never skips) when it is missing."""
    path = shutil.which(name)
    if path is None:
        pytest.fail(f"{name} is not installed: `make test` installs it "
                    f"(apt-get install {package}).")
    return path


def schema_check(text: str, path: Path) -> None:
    """Run ``cloud-init schema --config-file`` on ``text``; assert valid, no deprecations."""
    path.write_text(text, encoding="utf-8")
    path.chmod(0o600)  # it holds private keys
    result = subprocess.run([tool("cloud-init", "cloud-init"), "schema", "--config-file",
                             str(path)], capture_output=True, text=True, timeout=120)
    report = result.stdout + result.stderr
    assert result.returncode == 0, report
    assert "Valid cloud-config" in result.stdout, report
    assert not re.search(r"deprecations?:[ \t]*\S", report), report


def real_tls(tmp_path: Path) -> tuple[TlsMaterial, SshHostKey]:
    """A deployment's real certificates and an ed25519 host key, as the stack issues them."""
    certs = ensure_deployment_certs(tmp_path / "certs", ["203.0.113.10"], ["us", "eu"])
    tls = TlsMaterial(certs.ca.cert.read_text(), certs.server.cert.read_text(),
                      certs.server.key.read_text())
    key = ed25519.Ed25519PrivateKey.generate()
    private = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.OpenSSH,
                                serialization.NoEncryption()).decode("ascii")
    public = key.public_key().public_bytes(serialization.Encoding.OpenSSH,
                                           serialization.PublicFormat.OpenSSH).decode("ascii")
    return tls, SshHostKey(private, public)


@pytest.mark.parametrize("stack", CLOUD_STACKS)
def test_cloud_init_schema_accepts_every_cloud_stacks_user_data(stack: str,
                                                                 tmp_path: Path) -> None:
    run = stack_run(stack, real_certs=True)
    assert cloud_of(run) in ("aws", "gcp", "azure")
    text = user_data(run)
    assert "ssh_keys" in yaml.safe_load(text)  # the pinned host key is part of what is checked
    schema_check(text, tmp_path / f"{stack}.user-data")


@pytest.mark.parametrize("pinned_host_key", [True, False], ids=["host-key", "no-host-key"])
def test_cloud_init_schema_accepts_the_rendered_config(pinned_host_key: bool,
                                                        tmp_path: Path) -> None:
    tls, host = real_tls(tmp_path)
    text = cloud_config(tls, KEY, host_key=host if pinned_host_key else None)
    doc = yaml.safe_load(text)
    # ssh_keys given: cloud-init generates no key type, and its schema refuses an empty list
    assert "ssh_genkeytypes" not in doc
    assert ("ssh_keys" in doc) is pinned_host_key
    schema_check(text, tmp_path / "user-data")


def test_cloud_init_schema_check_catches_a_bad_config(tmp_path: Path) -> None:
    path = tmp_path / "bad.user-data"
    path.write_text("#cloud-config\nssh_genkeytypes: []\n", encoding="utf-8")
    result = subprocess.run([tool("cloud-init", "cloud-init"), "schema", "--config-file",
                             str(path)], capture_output=True, text=True, timeout=120)
    assert result.returncode != 0 and "ssh_genkeytypes" in result.stdout + result.stderr


def exposure(unit_text: str, tmp_path: Path) -> float:
    """``systemd-analyze security --offline=true``'s overall exposure score of a unit."""
    path = tmp_path / SERVICE
    path.write_text(unit_text, encoding="utf-8")
    result = subprocess.run([tool("systemd-analyze", "systemd"), "security", "--offline=true",
                             "--no-pager", str(path)], capture_output=True, text=True,
                            timeout=120)
    found = re.search(r"Overall exposure level for \S+: ([\d.]+)", result.stdout)
    assert found is not None, result.stdout + result.stderr
    return float(found.group(1))


def test_superlink_unit_exposure_is_below_5(tmp_path: Path) -> None:
    score = exposure(superlink_unit(), tmp_path)
    assert score < 5, f"systemd-analyze security rates the SuperLink unit {score}"
    # the same analyzer rates an unsandboxed unit EXPOSED: the score can fail
    bare = "\n".join(line for line in superlink_unit().splitlines() if line not in SANDBOX)
    assert exposure(bare, tmp_path) > 8


def test_superlink_unit_sandbox_keeps_what_the_superlink_needs() -> None:
    _, doc = parsed()
    lines = unit_lines(doc)
    assert lines["ProtectSystem"] == "strict"
    assert lines["ReadWritePaths"] == STATE_DIR  # database, FLWR_HOME, model store
    assert set(lines["RestrictAddressFamilies"].split()) == {"AF_INET", "AF_INET6", "AF_UNIX"}
    assert lines["CapabilityBoundingSet"] == "" and lines["NoNewPrivileges"] == "true"
    # torch's oneDNN JIT needs memory that becomes executable
    assert "MemoryDenyWriteExecute" not in lines
    # the operator's SSH user reads the model store the ServerApp writes
    assert lines["UMask"] == "0022"
    assert AGGREGATOR_REGISTRY_DIR.startswith(lines["ReadWritePaths"] + "/")


def test_systemd_verify_finds_no_unknown_directive(tmp_path: Path) -> None:
    # verify checks that ExecStart exists: point it at /bin/true, keep every directive
    unit = superlink_unit().replace(f"ExecStart={VENV}/bin/flower-superlink",
                                    "ExecStart=/bin/true")
    path = tmp_path / SERVICE
    path.write_text(unit, encoding="utf-8")
    result = subprocess.run([tool("systemd-analyze", "systemd"), "verify", "--man=no",
                             str(path)], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0 and not result.stderr.strip(), result.stderr
