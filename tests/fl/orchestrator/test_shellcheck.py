"""ShellCheck on every shell script sent to (or run on) a participant's VM, rendered for real.

The orchestrator's supervisor, launch, prepare, start, status, wait, stop and log-tail commands, the
probe, and the emulated VMs' venv wrappers, each rendered with realistic values and checked with
``shellcheck`` for the shell it declares (``sh`` when it declares none: an SSH command runs in
the login shell, which may be ``dash``). Any finding, of any severity, fails the test.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from fedcloud.core.participants import VmSpec
from fedcloud.local.emulated import EmulatedCloud
from fl.orchestrator import NodeLaunch
from fl.orchestrator.probe import probe_command
from fl.orchestrator.scripts import (
    SUPERVISOR_SCRIPT,
    launch_script,
    log_tail_command,
    prepare_command,
    remote_dir,
    start_command,
    status_command,
    stop_command,
    wait_command,
)

HOME_DIR = "/home/debian/fedcloud/fedcloud-hospital-a"  # a cloud VM: no workDir, resolved
SPACED_DIR = "/srv/fed work/fedcloud-hospital-a"  # an inventory workDir with a space
LAUNCH = NodeLaunch(superlink="203.0.113.5:9092", ca_cert=Path("ca.pem"),
                    node_key=Path("node.key"), data_dir="/data/hospital a", max_wait_time_s=120)


def _vm(work_dir: str | None, venv: str | None) -> VmSpec:
    return VmSpec(id="vm-001", host="10.0.0.4", port=22, user="debian", key_path=None,
                  host_key_fingerprint=None, state="Active", vcpus=4, memory_gb=8, disk_gb=40,
                  venv=venv, work_dir=work_dir)


def _orchestrator_scripts() -> dict[str, str]:
    scripts = {"supervise.sh": SUPERVISOR_SCRIPT}
    for label, vm in (("default", _vm(None, "/opt/fedcloud/venv")),
                      ("spaced", _vm("/srv/fed work", None))):
        declared = remote_dir(vm, "hospital-a")
        resolved = HOME_DIR if vm.work_dir is None else SPACED_DIR
        python = f"{vm.venv}/bin/python" if vm.venv else "python3"
        scripts |= {
            f"probe ({label})": probe_command(vm),
            f"prepare ({label})": prepare_command(declared, python),
            f"launch.sh ({label})": launch_script(resolved, LAUNCH, "hospital-a", 40123, vm.venv),
            f"start ({label})": start_command(resolved, 15.0),
            f"status ({label})": status_command(resolved),
            f"wait ({label})": wait_command(resolved, 4.0, 2),
            f"stop ({label})": stop_command(resolved),
            f"stop, declared dir ({label})": stop_command(declared),
            f"log tail ({label})": log_tail_command(resolved),
        }
    return scripts


def _emulated_wrappers(tmp_path: Path) -> dict[str, str]:
    venv = EmulatedCloud._venv_shims(tmp_path, "vm-001")
    return {f"emulated {p.name}": p.read_text() for p in sorted((venv / "bin").iterdir())
            if not p.is_symlink()}


def _shell(script: str) -> str:
    first = script.splitlines()[0] if script else ""
    if first.startswith("#!"):
        return Path(first[2:].split()[0]).name
    return "sh"


def _shellcheck() -> str:
    found = shutil.which("shellcheck")
    if found is None:
        pytest.fail("shellcheck is not installed: run 'make test' (it installs the Debian "
                    "package shellcheck), or apt-get install -y shellcheck.")
    return found


def _findings(shellcheck: str, script: str) -> str:
    done = subprocess.run([shellcheck, "--norc", "--severity=style", "--format=gcc",
                           f"--shell={_shell(script)}", "-"],
                          input=script, capture_output=True, text=True, check=False)
    return (done.stdout + done.stderr).strip() if done.returncode else ""


def test_every_remote_script_is_shellcheck_clean(tmp_path: Path) -> None:
    shellcheck = _shellcheck()
    scripts = _orchestrator_scripts() | _emulated_wrappers(tmp_path)
    assert {"emulated flower-supernode", "emulated python"} <= set(scripts)
    findings = {name: _findings(shellcheck, text) for name, text in scripts.items()}
    assert {name: f for name, f in findings.items() if f} == {}


def test_shellcheck_reports_what_it_should() -> None:
    # The check itself can fail: the unquoted substitution and `ulimit -v` found before.
    shellcheck = _shellcheck()
    assert "SC2046" in _findings(shellcheck, "echo exits=$(wc -l < exits)\n")
    assert "SC3045" in _findings(shellcheck, 'echo "as_kb=$(ulimit -v)"\n')
    assert _shell("#!/bin/bash\necho\n") == "bash" and _shell("echo\n") == "sh"
