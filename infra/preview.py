"""Run the Pulumi program under the SDK's unit-test mocks and record what it declares.

This is ``pulumi.runtime.set_mocks``, the Pulumi SDK's documented way to test a program without
an engine: the real ``__main__.py`` and the real provider SDK classes run, and every resource
registration and data-source call reaches :class:`RecordingMocks` instead of a cloud. It is
**not** ``pulumi preview``: no engine, no state, no provider plugins, so it cannot tell an update
from a replacement, cannot see drift, and computed values (addresses, ids, certificates, the
training results) are placeholders that :class:`RecordingMocks` makes up (documentation
addresses from 203.0.113.0/24). ``tests/`` and ``fedcloud preview`` both use it.
"""

from __future__ import annotations

import asyncio
import base64
import json
import logging
import runpy
import tempfile
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pulumi
from pulumi.runtime import mocks as pulumi_mocks
from pulumi.runtime import rpc

from fedcloud.core.config import PROJECT, ROOT, stack_file
from fedcloud.core.errors import ConfigError
from fedcloud.core.files import load_yaml, write_atomic
from infra.providers import IssueFn

PROGRAM = ROOT / "__main__.py"
SECRET = "[secret]"
COMPUTED = "<computed at pulumi up>"
DYNAMIC_PREFIX = "pulumi-python:dynamic/fedcloud:"
MOCK_IPS = {"aws": "203.0.113.201", "gcp": "203.0.113.202", "azure": "203.0.113.203"}
_MOCK_PEM = {
    "ca_cert": "-----BEGIN CERTIFICATE-----\nMOCK-CA-CERTIFICATE\n-----END CERTIFICATE-----\n",
    "ca_key": "-----BEGIN PRIVATE KEY-----\nMOCK-CA-KEY\n-----END PRIVATE KEY-----\n",
    "server_cert": "-----BEGIN CERTIFICATE-----\nMOCK-SERVER-CERT\n-----END CERTIFICATE-----\n",
    "server_key": "-----BEGIN PRIVATE KEY-----\nMOCK-SERVER-KEY\n-----END PRIVATE KEY-----\n",
}


@dataclass
class Recorded:
    """One registered resource as the program declared it.

    Attributes:
        type: Type token (``aws:ec2/instance:Instance``).
        name: Logical name.
        inputs: Input properties (wire names, camelCase), secrets unwrapped.
        redacted: The same with every secret value replaced by ``"[secret]"``.
        custom: ``False`` for components.
        provider: The explicit provider reference, if any.
        urn: Filled in after the run (its type chain shows the parents).
    """

    type: str
    name: str
    inputs: dict[str, Any]
    redacted: dict[str, Any]
    custom: bool
    provider: str | None
    urn: str = ""

    @property
    def parent(self) -> str | None:
        """The type of the resource's parent, from its URN (``None`` for the stack's children).

        The mock monitor's URNs carry only the immediate parent's type (the engine's carry the
        whole chain), which is all the policy checks need.
        """
        chain = self.urn.split("::")[2] if self.urn.count("::") >= 3 else ""
        parents = [t for t in chain.split("$")[:-1] if t != "pulumi:pulumi:Stack"]
        return parents[-1] if parents else None


def _strip(value: Any, redact: bool) -> Any:
    if rpc.is_rpc_secret(value):
        return SECRET if redact else _strip(rpc.unwrap_rpc_secret(value), redact)
    if isinstance(value, dict):
        return {k: _strip(v, redact) for k, v in value.items()}
    if isinstance(value, list):
        return [_strip(v, redact) for v in value]
    return value


class RecordingMocks(pulumi_mocks.Mocks):
    """Mocks that record every resource and call and return deterministic computed values.

    Args:
        issue: Issue the certificate resource's material for real with this function (random
            keys, a real SAN check) instead of returning placeholder PEM text.
    """

    def __init__(self, issue: IssueFn | None = None) -> None:
        self.issue = issue
        self.resources: list[Recorded] = []
        self.calls: list[tuple[str, dict[str, Any]]] = []

    def new_resource(self, args: pulumi_mocks.MockResourceArgs) -> tuple[str | None, dict]:
        """Record the resource; return its id and inputs plus computed outputs."""
        inputs = _strip(dict(args.inputs), redact=False)
        redacted = _strip(dict(args.inputs), redact=True)
        self.resources.append(Recorded(args.typ, args.name, inputs, redacted,
                                       bool(args.custom), args.provider or None))
        outs = {**inputs, **self._computed(args.typ, args.name, inputs)}
        return f"{args.name}-id", outs

    def call(self, args: pulumi_mocks.MockCallArgs) -> tuple[dict, list[tuple[str, str]] | None]:
        """Record the data-source call; return a plausible result (and no failures).

        The SDK iterates the failures even though its type says Optional: always a list.
        """
        return self._call(args), []

    def _call(self, args: pulumi_mocks.MockCallArgs) -> dict[str, Any]:
        call_args = _strip(dict(args.args), redact=False)
        self.calls.append((args.token, call_args))
        if args.token == "aws:ec2/getAmi:getAmi":
            return {"id": "ami-0mockubuntu2404", "imageId": "ami-0mockubuntu2404",
                    "name": "ubuntu/images/hvm-ssd-gp3/ubuntu-noble-24.04-amd64-server-mock"}
        if args.token == "gcp:compute/getZones:getZones":
            region = call_args.get("region", "mock-region")
            return {"names": [f"{region}-b", f"{region}-c"], "id": region}
        if args.token == "gcp:compute/getImage:getImage":
            return {"selfLink": "https://www.googleapis.com/compute/v1/projects/ubuntu-os-cloud"
                                "/global/images/ubuntu-2404-noble-amd64-mock",
                    "family": call_args.get("family")}
        return {}

    def _computed(self, typ: str, name: str, inputs: Mapping[str, Any]) -> dict[str, Any]:
        if typ == "aws:ec2/eip:Eip":
            return {"publicIp": MOCK_IPS["aws"], "allocationId": "eipalloc-0mock"}
        if typ == "aws:ec2/keyPair:KeyPair":
            return {"keyName": f"{name}-mock"}
        if typ == "gcp:compute/address:Address":
            return {"address": MOCK_IPS["gcp"]}
        if typ == "gcp:compute/instance:Instance":
            return {"instanceId": "1234567890123456789"}
        if typ.startswith("azure-native:"):
            outs: dict[str, Any] = {"name": f"{name}-mock"}
            if typ == "azure-native:network:PublicIPAddress":
                outs["ipAddress"] = MOCK_IPS["azure"]
            if typ == "azure-native:compute:VirtualMachine":
                outs["vmId"] = "00000000-0000-4000-8000-000000000000"
            return outs
        if typ == f"{DYNAMIC_PREFIX}DeploymentCerts":
            return self._certs(inputs)
        if typ == f"{DYNAMIC_PREFIX}SuperLinkHealth":
            return {"healthy": True, "probes": 1}
        if typ == f"{DYNAMIC_PREFIX}TrainingDispatch":
            config = json.loads(inputs.get("config") or "{}")
            names = [p.get("name") for p in config.get("participants", [])]
            return {"participants": {n: {"vm": COMPUTED, "attempts": COMPUTED, "status": COMPUTED}
                                     for n in names},
                    "training": {"runId": COMPUTED, "status": COMPUTED, "rounds": COMPUTED,
                                 "bestModel": COMPUTED}}
        return {}

    def _certs(self, inputs: Mapping[str, Any]) -> dict[str, Any]:
        if self.issue is not None:
            return self.issue(inputs, None)
        nodes = {n: {"publicKey": f"ecdsa-sha2-nistp384 MOCK-{n}",
                     "privateKey": f"-----BEGIN OPENSSH PRIVATE KEY-----\nMOCK-{n}\n"
                                   "-----END OPENSSH PRIVATE KEY-----\n"}
                 for n in inputs.get("participants") or []}
        return {**_MOCK_PEM, "node_keys": nodes,
                "ssh_host_key": "-----BEGIN OPENSSH PRIVATE KEY-----\nMOCK-HOST-KEY\n"
                                "-----END OPENSSH PRIVATE KEY-----\n",
                "ssh_host_public": "ssh-ed25519 MOCK-HOST-KEY",
                "ssh_host_fingerprint": "SHA256:MOCK-HOST-KEY-FINGERPRINT"}


@dataclass
class MockRun:
    """What one program run declared.

    Attributes:
        stack: Stack name.
        resources: Every registered resource (components included), in registration order.
        calls: Data-source calls ``(token, args)``.
        outputs: Stack exports, resolved.
        secret_outputs: Names of the exports that are secret.
        warnings: Messages the program logged at warning level.
    """

    stack: str
    resources: list[Recorded]
    calls: list[tuple[str, dict[str, Any]]]
    outputs: dict[str, Any]
    secret_outputs: set[str] = field(default_factory=set)
    warnings: list[str] = field(default_factory=list)

    def of_type(self, typ: str) -> list[Recorded]:
        """The resources of one type, sorted by name."""
        return sorted((r for r in self.resources if r.type == typ), key=lambda r: r.name)

    def user_data(self) -> str | None:
        """The aggregator VM's cloud-init text, whichever cloud it is in (``None`` if no VM)."""
        for rec in self.resources:
            if rec.type == "aws:ec2/instance:Instance":
                return str(rec.inputs["userData"])
            if rec.type == "gcp:compute/instance:Instance":
                return str(rec.inputs["metadata"]["user-data"])
            if rec.type == "azure-native:compute:VirtualMachine":
                encoded = rec.inputs["osProfile"]["customData"]
                return base64.b64decode(encoded).decode("utf-8")
        return None

    def one(self, typ: str) -> Recorded:
        """The single resource of ``typ`` (AssertionError otherwise)."""
        found = self.of_type(typ)
        assert len(found) == 1, f"expected one {typ}, found {[r.name for r in found]}"
        return found[0]


class _ListHandler(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())


def stack_config(name: str) -> dict[str, str]:
    """Read ``stacks/Pulumi.<name>.yaml`` as Pulumi's config map (``ns:key`` -> string).

    Structured values become JSON strings, as the engine passes them to the program.

    Raises:
        ConfigError: Missing file, or an encrypted secret (only the Pulumi CLI can decrypt it).
    """
    path = stack_file(name)
    if not path.exists():
        raise ConfigError(f"stack '{name}' not found ({path}).",
                          "use a stack from stacks/ (ls stacks/).")
    doc = load_yaml(path) or {}
    out: dict[str, str] = {}
    for key, value in (doc.get("config") or {}).items():
        if isinstance(value, dict) and set(value) == {"secure"}:
            raise ConfigError(f"{path}: '{key}' is encrypted; mocks cannot decrypt it.",
                              "render a stack without secrets, or use 'pulumi preview'.")
        out[str(key)] = value if isinstance(value, str) else json.dumps(value)
    return out


@contextmanager
def _fresh_runtime(stack: str, monitor: pulumi_mocks.MockMonitor,
                   logger: logging.Logger) -> Iterator[None]:
    # set_mocks creates the root Stack only when none exists; a fresh run needs a fresh root.
    # ROOT is an internal API of the SDK: this is the one place that touches it.
    pulumi.runtime.settings.ROOT.set(None)
    pulumi.runtime.set_mocks(monitor.mocks, project=PROJECT, stack=stack, preview=False,
                             logger=logger, monitor=monitor)
    try:
        yield
    finally:
        pulumi.runtime.settings.ROOT.set(None)


def run_program(stack: str, config: Mapping[str, str], secret_keys: Sequence[str] = (),
                issue: IssueFn | None = None, program: Path = PROGRAM) -> MockRun:
    """Run ``__main__.py`` once under fresh mocks.

    Args:
        stack: Stack name (``pulumi.get_stack()``).
        config: Pulumi config map (``fedcloud:participants`` -> JSON string, ...).
        secret_keys: Config keys to mark secret.
        issue: Issue real certificates with this function (see :class:`RecordingMocks`).
        program: The program file.

    Returns:
        The recorded run.

    Raises:
        pulumi.RunError: The program rejected its config (with the fix).
    """
    mocks = RecordingMocks(issue=issue)
    handler = _ListHandler()
    logger = logging.getLogger(f"fedcloud.mockrun.{stack}")
    logger.addHandler(handler)
    logger.propagate = False
    result: dict[str, Any] = {}
    secrets: set[str] = set()

    async def collect() -> None:
        root = pulumi.runtime.settings.get_root_resource()
        exports = dict(getattr(root, "outputs", {}) or {})
        for key, value in exports.items():
            out = pulumi.Output.from_input(value)
            result[key] = await out.future()
            if await out.is_secret():
                secrets.add(key)

    def body() -> Any:
        runpy.run_path(str(program), run_name="__main__")
        return asyncio.ensure_future(collect())

    monitor = pulumi_mocks.MockMonitor(mocks)
    try:
        with _fresh_runtime(stack, monitor, logger):
            pulumi.runtime.set_all_config(dict(config), list(secret_keys))
            pulumi.runtime.test(body)()
    finally:
        logger.removeHandler(handler)
    urns = {(urn.split("::")[2].split("$")[-1], urn.split("::")[-1]): urn
            for urn in monitor.resources}
    for rec in mocks.resources:
        rec.urn = urns.get((rec.type, rec.name), "")
    return MockRun(stack=stack, resources=mocks.resources, calls=mocks.calls, outputs=result,
                   secret_outputs=secrets, warnings=handler.messages)


# A well-formed OpenSSH public key that nobody holds the private half of (never deployed).
PLACEHOLDER_SSH_KEY = ("ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIPLACEHOLDERxKEYxFORxPREVIEWxONLYxx "
                       "fedcloud-preview-placeholder")


def with_placeholder_key(config: Mapping[str, str], key_dir: Path) -> tuple[dict[str, str], str]:
    """Point ``aggregator.sshPublicKeyPath`` at a placeholder key when the stack's key is missing.

    A preview never connects to anything, so it need not have the operator's key on disk.

    Returns:
        The config map to run with, and a notice ("" when the stack's own key was used).
    """
    out = dict(config)
    aggregator = json.loads(out.get("fedcloud:aggregator") or "{}")
    given = aggregator.get("sshPublicKeyPath") if isinstance(aggregator, dict) else None
    if not isinstance(given, str) or not given:
        return out, ""
    path = Path(given).expanduser()
    path = path if path.is_absolute() else ROOT / path
    if path.is_file():
        return out, ""
    placeholder = key_dir / "placeholder_ed25519.pub"
    placeholder.write_text(PLACEHOLDER_SSH_KEY + "\n", encoding="ascii")
    out["fedcloud:aggregator"] = json.dumps({**aggregator, "sshPublicKeyPath": str(placeholder)})
    return out, (f"no SSH public key at {given}: this preview uses a placeholder key "
                 "(pulumi up needs the real one)")


def run_stack(name: str, issue: IssueFn | None = None) -> MockRun:
    """Run the program for ``stacks/Pulumi.<name>.yaml`` under mocks.

    Without the stack's SSH public key on disk a placeholder is used, and the run's warnings
    say so.
    """
    with tempfile.TemporaryDirectory(prefix="fedcloud-preview-") as tmp:
        config, notice = with_placeholder_key(stack_config(name), Path(tmp))
        run = run_program(name, config, issue=issue)
    if notice:
        run.warnings.append(notice)
    return run


NOTICE = (
    "Rendered with the Pulumi SDK's unit-test mocks (pulumi.runtime.set_mocks), not by "
    "'pulumi preview': no engine, state or provider plugins, so it cannot tell an update from "
    "a replacement and cannot see drift; ids, addresses, certificates and training results are "
    "placeholders."
)


def render(run: MockRun) -> dict[str, Any]:
    """Return the run as a deterministic, JSON-able document (the golden-file format).

    Resources are sorted by (type, name) with their parent's type, the explicit provider's
    name and their input properties (secrets shown as ``"[secret]"``, the pickled dynamic
    provider left out); data-source calls and warnings are sorted; exports are by name; the
    VM's cloud-init (with the mocks' placeholder TLS material) is listed line by line.
    """
    resources = []
    for rec in sorted(run.resources, key=lambda r: (r.type, r.name)):
        props = {k: v for k, v in rec.redacted.items() if k != "__provider"}
        entry: dict[str, Any] = {"type": rec.type, "name": rec.name, "parent": rec.parent}
        if rec.provider:
            # "urn:pulumi:STACK::PROJECT::TYPE::NAME::ID" -> NAME (ids are mock values)
            entry["provider"] = rec.provider.split("::")[3]
        entry["properties"] = props
        resources.append(entry)
    calls = sorted(({"token": t, "args": a} for t, a in run.calls),
                   key=lambda c: json.dumps(c, sort_keys=True))
    outputs = {k: SECRET if k in run.secret_outputs else run.outputs[k]
               for k in sorted(run.outputs)}
    # The VM's user data is a secret (it carries the server key), so its property shows
    # "[secret]"; under mocks the key is a placeholder, so the bootstrap is shown here in full.
    bootstrap = run.user_data()
    return _portable({"notice": NOTICE, "stack": run.stack, "resources": resources,
                      "calls": calls, "outputs": outputs, "warnings": sorted(run.warnings),
                      "bootstrap": bootstrap.splitlines() if bootstrap is not None else None})


def _portable(value: Any) -> Any:
    """Write paths inside the project as ``<project>/...``.

    A rendering is then the same in any checkout (golden files are compared on fresh clones).
    """
    if isinstance(value, str):
        return value.replace(str(ROOT), "<project>")
    if isinstance(value, Mapping):
        return {k: _portable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_portable(v) for v in value]
    return value


def render_stack(name: str) -> dict[str, Any]:
    """Render ``stacks/Pulumi.<name>.yaml``; a rejected config renders as its error message."""
    try:
        return render(run_stack(name))
    except pulumi.RunError as exc:
        return {"notice": NOTICE, "stack": name, "error": str(exc)}


def to_json(doc: Mapping[str, Any]) -> str:
    """Serialize a rendered document the one way golden files are written (sorted, indented)."""
    return json.dumps(doc, indent=2, sort_keys=True, ensure_ascii=False) + "\n"


def write_atomic_text(path: str | Path, text: str) -> None:
    """Write ``text`` to ``path`` atomically."""
    write_atomic(Path(path), text.encode("utf-8"), 0o644)
