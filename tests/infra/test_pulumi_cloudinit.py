"""The aggregator's cloud-init (infra/cloudinit.py): installs and launches, nothing else."""

from __future__ import annotations

import shlex
from typing import Any

import yaml

from fedcloud.core.flower import FLOWER_QUIET_ENV
from fl.initializer.superlink import SUPERLINK_PORT, superlink_argv
from infra.cloudinit import (
    AGGREGATOR_REGISTRY_DIR,
    ENV_FILE,
    SERVICE,
    STATE_DIR,
    TLS_DIR,
    VENV,
    TlsMaterial,
    cloud_config,
    pinned_requirements,
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
