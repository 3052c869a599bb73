"""The ``flwr`` CLI under the project's own ``FLWR_HOME`` (never the user's ``~/.flwr``).

The CLI is Flower's public, versioned client of the SuperLink's Control API. A CLI call is a
short subprocess (about 1.7 s, mostly imports) with a timeout, ``--format json`` where Flower
offers it, and Flower's phone-home switched off. Node registration and the run list, asked
around every job, send the CLI's own requests in this process instead (``fedcloud.core.control``)
when ``config.toml`` holds the connection.

The connection lives in ``$FLWR_HOME/config.toml`` (``[superlink.NAME]`` with ``address`` and
``root-certificates``, or ``insecure = true``). A legacy ``[tool.flwr.federations]`` table in an
app's pyproject would make the CLI rewrite that file, so the app never has one.
"""

from __future__ import annotations

import json
import logging
import re
import subprocess
import threading
import time
import tomllib
from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from fedcloud.core.control import ControlApi
from fedcloud.core.errors import TrainingError
from fedcloud.core.files import write_atomic
from fedcloud.core.flower import default_executable, venv_bin_env

log = logging.getLogger(__name__)

CLI_TIMEOUT_S = 60.0
ONLINE_POLL_S = 1.0
STREAM_STOP_GRACE_S = 10.0
# Printed by `flwr run` (1.41, default format) once the SuperLink accepted the run.
_STARTED = re.compile(r"Successfully started run (\d+)")
# Run statuses as `flwr ls` prints them ("finished:completed", "finished:failed", ...).
FINISHED = "finished"


@dataclass(frozen=True)
class NodeInfo:
    """One SuperNode as ``flwr supernode list --format json`` reports it."""

    node_id: int
    status: str
    online_at: str
    offline_at: str

    @property
    def online(self) -> bool:
        """Whether the SuperLink currently sees the node."""
        return self.status == "online"


@dataclass(frozen=True)
class RunInfo:
    """One run as ``flwr ls --format json`` reports it.

    Attributes:
        run_id: Flower's run id.
        status: ``pending``, ``starting``, ``running`` or ``finished:<completed|failed|stopped>``.
        details: Flower's status details (the error message of a failed run).
        elapsed_s: Wall time from running to finished (or now), from Flower's timestamps.
        inbound_bytes: Bytes received by the SuperLink for the run (client replies).
        outbound_bytes: Bytes sent by the SuperLink for the run (messages to clients).
        raw: The JSON object as printed.
    """

    run_id: int
    status: str
    details: str
    elapsed_s: float
    inbound_bytes: int
    outbound_bytes: int
    raw: Mapping[str, Any] = field(repr=False)

    @property
    def finished(self) -> bool:
        """Whether the run reached a final state."""
        return self.status.startswith(FINISHED)


def _toml_value(value: str | bool) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return json.dumps(value)  # a JSON string of printable text is a valid TOML basic string


def _render_config(doc: Mapping[str, Any]) -> str:
    """Render the ``[superlink]`` table of Flower's config.toml (strings and booleans only)."""
    superlink = doc.get("superlink", {})
    lines = ["# Written by fedcloud (fl/flwr_cli.py); edits are overwritten.", "[superlink]"]
    if "default" in superlink:
        lines.append(f"default = {_toml_value(superlink['default'])}")
    for name, conn in superlink.items():
        if not isinstance(conn, Mapping):
            continue
        lines += ["", f"[superlink.{json.dumps(name)}]"]
        lines += [f"{key} = {_toml_value(val)}" for key, val in conn.items()]
    return "\n".join(lines) + "\n"


def _parse_iso(text: str | None) -> float | None:
    if not text or text == "N/A":
        return None
    try:
        return datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()
    except ValueError:
        return None


def run_info_from_json(obj: Mapping[str, Any]) -> RunInfo:
    """Build a :class:`RunInfo` from one entry of ``flwr ls --format json``."""
    traffic = obj.get("network-traffic") or {}
    running = _parse_iso(obj.get("running-at"))
    finished = _parse_iso(obj.get("finished-at"))
    elapsed = 0.0
    if running is not None:
        elapsed = (finished if finished is not None else time.time()) - running
    return RunInfo(
        run_id=int(obj["run-id"]),
        status=str(obj.get("status", "")),
        details=str(obj.get("status-details", "") or ""),
        elapsed_s=max(elapsed, 0.0),
        inbound_bytes=int(traffic.get("inbound-bytes", 0) or 0),
        outbound_bytes=int(traffic.get("outbound-bytes", 0) or 0),
        raw=dict(obj),
    )


@dataclass
class RunStream:
    """A ``flwr run --stream`` in progress: the run id and every log line so far."""

    run_id: int
    proc: subprocess.Popen[str]
    lines: list[str]
    reader: threading.Thread

    def wait(self, timeout_s: float | None) -> bool:
        """Wait until the stream ends (the run finished); return False on timeout."""
        self.reader.join(timeout_s)
        if self.reader.is_alive():
            return False
        self.proc.wait(timeout=STREAM_STOP_GRACE_S)
        return True

    def close(self) -> None:
        """Stop following the log (the run itself is not affected)."""
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=STREAM_STOP_GRACE_S)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=STREAM_STOP_GRACE_S)
        self.reader.join(STREAM_STOP_GRACE_S)


class FlwrCli:
    """The ``flwr`` command line with its own ``FLWR_HOME``.

    Args:
        home: The project's Flower home (``<state>/flwr-home``); holds ``config.toml``.
        executable: ``flwr`` program; default: the one next to this Python.
        timeout_s: Timeout of each short command.
    """

    def __init__(self, home: Path, executable: str | None = None,
                 timeout_s: float = CLI_TIMEOUT_S) -> None:
        self.home = Path(home).resolve()
        self.executable = executable or default_executable("flwr")
        self.timeout_s = timeout_s

    @property
    def config_path(self) -> Path:
        """``$FLWR_HOME/config.toml``."""
        return self.home / "config.toml"

    def env(self) -> dict[str, str]:
        """Environment of every ``flwr`` call (quiet Flower, own FLWR_HOME, no colour)."""
        return venv_bin_env(self.executable, {"FLWR_HOME": str(self.home), "NO_COLOR": "1",
                                              "COLUMNS": "200", "PYTHONUNBUFFERED": "1"})

    # -- connection ------------------------------------------------------------------------

    def write_connection(self, name: str, address: str, ca_cert: Path | None,
                         insecure: bool = False, default: bool = True) -> Path:
        """Write (or replace) the ``[superlink.NAME]`` connection in ``config.toml``.

        Args:
            name: Connection name (used as the ``SUPERLINK`` argument of every command).
            address: SuperLink ``host:port``.
            ca_cert: The deployment CA (absolute path is written).
            insecure: Development only: plain HTTP.
            default: Also make it the default connection.

        Returns:
            The config file path.

        Raises:
            TrainingError: Neither a CA certificate nor the insecure flag is given.
        """
        if not re.fullmatch(r"[A-Za-z0-9_-]+", name):
            raise TrainingError(f"connection name '{name}' is not a bare TOML key.",
                                "use letters, digits, '-' and '_'.")
        conn: dict[str, str | bool] = {"address": address}
        if insecure:
            log.warning("flwr connection %s is INSECURE (development flag)", name)
            conn["insecure"] = True
        elif ca_cert is None:
            raise TrainingError(f"the flwr connection '{name}' needs the deployment CA "
                                "certificate.",
                                "pass ca_cert (fl.initializer.certs: <state>/certs/ca.pem).")
        else:
            conn["root-certificates"] = str(Path(ca_cert).resolve())
        doc: dict[str, Any] = {"superlink": {}}
        if self.config_path.exists():
            try:
                doc = tomllib.loads(self.config_path.read_text(encoding="utf-8"))
            except tomllib.TOMLDecodeError:
                log.warning("%s is not valid TOML; rewriting it", self.config_path)
                doc = {"superlink": {}}
        superlink = doc.setdefault("superlink", {})
        superlink[name] = conn
        if default:
            superlink["default"] = name
        self.home.mkdir(parents=True, exist_ok=True)
        write_atomic(self.config_path, _render_config(doc).encode(), 0o600)
        return self.config_path

    # -- running the CLI -------------------------------------------------------------------

    def _call(self, args: list[str], timeout_s: float | None = None) -> str:
        argv = [self.executable, *args]
        try:
            res = subprocess.run(argv, capture_output=True, text=True, env=self.env(),
                                 timeout=timeout_s or self.timeout_s, cwd=self.home, check=False)
        except subprocess.TimeoutExpired:
            raise TrainingError(
                f"'flwr {' '.join(args)}' did not answer within {timeout_s or self.timeout_s:.0f}"
                " s.", "check that the SuperLink is running and reachable.",
            ) from None
        out = res.stdout
        if res.returncode != 0:
            raise TrainingError(
                f"'flwr {' '.join(args)}' failed (exit {res.returncode}): "
                f"{_error_text(out, res.stderr)}",
                "check the SuperLink address and CA in "
                f"{self.config_path} and that the SuperLink is running.",
            )
        return out

    def _call_json(self, args: list[str]) -> dict[str, Any]:
        out = self._call([*args, "--format", "json"])
        doc = _last_json(out)
        if doc is None:
            raise TrainingError(f"'flwr {' '.join(args)}' printed no JSON: {out[-300:]!r}.",
                                "check that flwr is version 1.41.")
        if not doc.get("success", False):
            raise TrainingError(
                f"'flwr {' '.join(args)}' failed: {doc.get('error-message', doc)}.",
                "check the SuperLink address and CA in "
                f"{self.config_path} and that the SuperLink is running.",
            )
        return doc

    def _control(self, connection: str) -> ControlApi | None:
        """The Control API client of ``connection`` (``None``: not in ``config.toml``)."""
        return ControlApi.from_config(self.config_path, connection)

    # -- nodes -----------------------------------------------------------------------------

    def register_node(self, public_key: Path, connection: str) -> int:
        """Register a SuperNode's public key; return its node id.

        Sent over the Control API in this process (:class:`fedcloud.core.control.ControlApi`,
        the request ``flwr supernode register`` sends) when ``config.toml`` holds the
        connection, else with the CLI.
        """
        control = self._control(connection)
        if control is not None:
            try:
                return control.register_node(Path(public_key), connection)
            finally:
                control.close()
        doc = self._call_json(["supernode", "register", str(public_key), connection])
        return int(doc["node-id"])

    def list_nodes(self, connection: str) -> list[NodeInfo]:
        """List the SuperNodes the SuperLink knows (``flwr supernode list``)."""
        doc = self._call_json(["supernode", "list", connection])
        return [
            NodeInfo(node_id=int(n["node-id"]), status=str(n["status"]),
                     online_at=str(n.get("online-at", "")),
                     offline_at=str(n.get("offline-at", "")))
            for n in doc.get("nodes", [])
        ]

    def wait_online(self, connection: str, node_ids: Collection[int],
                    timeout_s: float) -> list[NodeInfo]:
        """Wait until every node in ``node_ids`` is online.

        Returns:
            The node list at that moment.

        Raises:
            TrainingError: Some nodes are not online after ``timeout_s`` (named with status).
        """
        deadline = time.monotonic() + timeout_s
        while True:
            nodes = self.list_nodes(connection)
            by_id = {n.node_id: n for n in nodes}
            missing = [i for i in node_ids if not (i in by_id and by_id[i].online)]
            if not missing:
                return nodes
            if time.monotonic() >= deadline:
                states = ", ".join(
                    f"{i}: {by_id[i].status if i in by_id else 'unknown'}" for i in missing)
                raise TrainingError(
                    f"SuperNodes not online after {timeout_s:.0f} s ({states}).",
                    "check each node's log: wrong CA, unregistered key or unreachable SuperLink.",
                )
            time.sleep(ONLINE_POLL_S)

    # -- runs ------------------------------------------------------------------------------

    def run(self, app_dir: Path, connection: str, run_config: str,
            on_line: Callable[[str], None] | None = None,
            start_timeout_s: float = CLI_TIMEOUT_S) -> RunStream:
        """Submit the app (``flwr run APP_DIR CONNECTION --run-config ... --stream``).

        The FAB is built from ``app_dir`` by the CLI. Returns once the SuperLink has accepted
        the run; the log keeps streaming into :attr:`RunStream.lines` (and ``on_line``).

        Raises:
            TrainingError: The run was not accepted within ``start_timeout_s``.
        """
        argv = [self.executable, "run", str(app_dir), connection, "--run-config", run_config,
                "--stream"]
        proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                text=True, env=self.env(), cwd=self.home, bufsize=1)
        lines: list[str] = []
        started = threading.Event()
        run_id: list[int] = []

        def read() -> None:
            assert proc.stdout is not None
            for line in proc.stdout:
                line = line.rstrip("\n")
                lines.append(line)
                if not run_id and (m := _STARTED.search(line)):
                    run_id.append(int(m.group(1)))
                    started.set()
                if on_line is not None:
                    on_line(line)
            started.set()

        reader = threading.Thread(target=read, name="flwr-run-stream", daemon=True)
        reader.start()
        started.wait(start_timeout_s)
        if not run_id:
            if proc.poll() is None:
                proc.kill()
            proc.wait(timeout=STREAM_STOP_GRACE_S)
            reader.join(STREAM_STOP_GRACE_S)
            tail = "\n".join(lines[-15:])
            raise TrainingError(f"'flwr run {app_dir}' was not accepted by the SuperLink:\n{tail}",
                                "check the app directory, the run config and the SuperLink log.")
        return RunStream(run_id=run_id[0], proc=proc, lines=lines, reader=reader)

    def list_runs(self, connection: str, run_id: int | None = None) -> list[RunInfo]:
        """List runs (as ``flwr ls --format json``), or one run with ``run_id``.

        Over the Control API in this process when ``config.toml`` holds the connection (the
        run's status is asked after every run), else with the CLI.
        """
        control = self._control(connection)
        if control is not None:
            try:
                return [run_info_from_json(r) for r in control.list_runs(connection, run_id)]
            finally:
                control.close()
        args = ["ls", connection] + (["--run-id", str(run_id)] if run_id is not None else [])
        doc = self._call_json(args)
        return [run_info_from_json(r) for r in doc.get("runs", [])]

    def run_info(self, connection: str, run_id: int) -> RunInfo:
        """Return one run's status and traffic."""
        runs = self.list_runs(connection, run_id)
        if not runs:
            raise TrainingError(f"run {run_id} is unknown to the SuperLink.",
                                "list the runs with 'flwr ls'.")
        return runs[0]

    def stop_run(self, run_id: int, connection: str) -> None:
        """Stop a run (``flwr stop``)."""
        self._call_json(["stop", str(run_id), connection])


def _last_json(text: str) -> dict[str, Any] | None:
    for line in reversed(text.strip().splitlines()):
        line = line.strip()
        if line.startswith("{"):
            try:
                doc = json.loads(line)
            except json.JSONDecodeError:
                continue
            if isinstance(doc, dict):
                return doc
    try:
        doc = json.loads(text)
    except json.JSONDecodeError:
        return None
    return doc if isinstance(doc, dict) else None


def _error_text(stdout: str, stderr: str) -> str:
    doc = _last_json(stdout)
    if doc is not None and "error-message" in doc:
        return str(doc["error-message"]).strip()
    text = (stderr.strip() or stdout.strip()).splitlines()
    return " ".join(text[-3:]) if text else "no output"
