"""The shell scripts the orchestrator sends to a participant's VM, and what they print.

All POSIX ``sh``, for ``<workDir>/fedcloud-<participant>/`` on the VM: the supervisor, the
``flower-supernode`` launch line and one-shot commands whose ``key=value`` output
:func:`parse_fields` reads. See fl/README.md, "On the VM: the scripts".
"""

from __future__ import annotations

import math
import posixpath
import shlex
from dataclasses import dataclass

from fedcloud.core.flower import FLOWER_QUIET_ENV
from fedcloud.core.participants import VmSpec
from fl.orchestrator.nodes import NodeLaunch
from fl.orchestrator.ssh import Session, remote_command
from fl.orchestrator.supernode import supernode_argv, supernode_env, supernode_shell_command
from fl.orchestrator.warmstart import launch_lines

DEFAULT_WORK_DIR = "fedcloud"
"""A VM's work directory when the inventory sets none (relative: under the SSH user's home)."""
STOP_WAIT_S = 10.0
"""How long a stop waits for the SuperNode to exit after SIGTERM before SIGKILL."""

# Remote file names in <workDir>/fedcloud-<participant>/.
CA_FILE = "ca.pem"
KEY_FILE = "node.key"
LAUNCH_FILE = "launch.sh"
SUPERVISOR_FILE = "supervise.sh"
SUPERVISOR_PID = "supervisor.pid"
SUPERNODE_PID = "supernode.pid"
EXITS_FILE = "exits"
STOP_FILE = "stop"
LOG_FILE = "supernode.log"
FLWR_HOME = "flwr-home"

FAST_EXIT_S = 30
"""A SuperNode that exits sooner than this after its start never joined (a refused start)."""
JOINED_LINE = "SuperNode ID:"
"""What flower-supernode 1.41 logs once the SuperLink has activated it (``ActivateNode`` done)."""
WAIT_STEP_S = 0.2
"""Poll interval of :func:`wait_command` on the VM (a file check, no SSH round trip)."""
WAIT_COMMAND_SLACK_S = 30.0
"""Allowance on top of a wait command's window for a loaded VM (a status read's old bound)."""


def supervisor_script(fast_exit_s: int = FAST_EXIT_S) -> str:
    """Return ``supervise.sh``: restart the SuperNode until the stop file exists.

    After the death of a node that had run ``fast_exit_s`` or longer, the SuperLink may hold its
    session, and refuse its key, until HOLD_S after the death: a start refused (a run shorter
    than ``fast_exit_s``) in that time is retried only once the hold is over.
    """
    return f"""#!/bin/sh
# fedcloud SuperNode supervisor (fl/orchestrator/scripts.py).
# Usage: {SUPERVISOR_FILE} DELAY_S [HOLD_S [held]]   (held: the key may still be held now)
cd "$(dirname "$0")" || exit 1
delay="$1"
hold="${{2:-0}}"
echo $$ > {SUPERVISOR_PID}
n=0
held_until=0
if [ "${{3:-}}" = held ]; then held_until=$(($(date +%s) + hold)); fi
while [ ! -e {STOP_FILE} ]; do
  n=$((n + 1))
  began=$(date +%s)
  sh ./{LAUNCH_FILE} >> {LOG_FILE} 2>&1 &
  echo $! > {SUPERNODE_PID}
  wait $!
  code=$?
  now=$(date +%s)
  echo "$n $code $now" >> {EXITS_FILE}
  [ -e {STOP_FILE} ] && break
  if [ $((now - began)) -ge {fast_exit_s} ]; then held_until=$((now + hold)); fi
  pause=$((held_until - now))
  if [ "$pause" -gt 0 ] && [ $((now - began)) -lt {fast_exit_s} ]; then
    echo "$now: start refused; the SuperLink holds the node for ${{pause}} s" >> {LOG_FILE}
    sleep "$pause"
  else
    sleep "$delay"
  fi
done
"""


SUPERVISOR_SCRIPT = supervisor_script()

# A PID names a live process (a zombie is dead: it only waits to be reaped).
_ALIVE_FN = ('alive() { [ -n "$1" ] && [ -e "/proc/$1" ] && '
             "! grep -q '^State:.Z' \"/proc/$1/status\"; }\n")

# Stop the supervisor of the current directory; leaves no node key behind. ONE SIGTERM only:
# Flower's handler restores the default action after the first, so a second signal kills the
# SuperNode before it deactivates itself at the SuperLink (which then refuses the same key
# elsewhere until the old session's heartbeat expires, about 60 s).
_STOP_BODY = _ALIVE_FN + f"""touch {STOP_FILE}
pg=$(cat {SUPERVISOR_PID} 2>/dev/null); node=$(cat {SUPERNODE_PID} 2>/dev/null)
if alive "$pg"; then kill -TERM -"$pg" 2>/dev/null; elif alive "$node"; then kill -TERM "$node"; fi
i=0
while {{ alive "$pg" || alive "$node"; }} && [ "$i" -lt {int(STOP_WAIT_S * 10)} ]; do
  sleep 0.1; i=$((i + 1))
done
if [ -n "$pg" ]; then kill -KILL -"$pg" 2>/dev/null; fi
if alive "$node"; then kill -KILL "$node" 2>/dev/null; fi
rm -f {KEY_FILE} {SUPERVISOR_PID} {SUPERNODE_PID}
"""

_FREE_PORT_PY = ("import socket; s = socket.socket(); s.bind(('127.0.0.1', 0)); "
                 "print('port=%d' % s.getsockname()[1])")


def work_dir(vm: VmSpec) -> str:
    """The VM's work directory as declared (relative to the SSH user's home without workDir)."""
    return vm.work_dir or DEFAULT_WORK_DIR


def remote_dir(vm: VmSpec, participant: str) -> str:
    """The participant's directory on ``vm`` as declared (see :func:`work_dir`)."""
    return f"{work_dir(vm)}/fedcloud-{participant}"


def quiet(command: str) -> str:
    """Prefix ``command`` with Flower's no-telemetry, no-update-check variables."""
    exports = " ".join(f"{k}={v}" for k, v in FLOWER_QUIET_ENV.items())
    return f"export {exports}; {command}"


def prepare_command(directory: str, python: str) -> str:
    """Create ``directory`` (0700) and stop a stale supervisor there.

    Prints ``dir=<its absolute path>`` and ``port=<a free local port>``; exits 3 when the
    directory cannot be created.
    """
    q = shlex.quote(directory)
    return quiet(f"mkdir -p {q} && chmod 700 {q} && cd {q} || exit 3\n"
                 'echo "dir=$(pwd -P)"\n'
                 + _STOP_BODY
                 + f"rm -f {STOP_FILE} {EXITS_FILE}\n"
                 + f"if [ -e {LOG_FILE} ]; then mv -f {LOG_FILE} {LOG_FILE}.1; fi\n"
                 + f"{shlex.quote(python)} -c {shlex.quote(_FREE_PORT_PY)}\n")


def launch_script(directory: str, launch: NodeLaunch, participant: str, runtime_port: int,
                  venv: str | None) -> str:
    """Return ``launch.sh``: the warm starter, then the participant's ``flower-supernode`` line.

    Args:
        directory: The participant's directory on the VM, absolute (from :func:`prepare_command`).
        launch: What the SuperNode needs.
        participant: The participant.
        runtime_port: The SuperNode's local runtime API port.
        venv: The VM's venv (``None``: ``flower-supernode`` from PATH).

    Raises:
        ValueError: ``directory`` is relative.
    """
    if not posixpath.isabs(directory):
        raise ValueError(f"launch_script needs an absolute directory, got {directory!r}")
    bin_dir = f"{venv}/bin" if venv else None
    argv = supernode_argv(
        superlink=launch.superlink, data_dir=launch.data_dir, participant=participant,
        ca_cert=f"{directory}/{CA_FILE}", private_key=f"{directory}/{KEY_FILE}",
        max_wait_time_s=launch.max_wait_time_s, runtime_host="127.0.0.1",
        runtime_port=runtime_port,
        executable=f"{bin_dir}/flower-supernode" if bin_dir else "flower-supernode",
    )
    env = supernode_env(flwr_home=f"{directory}/{FLWR_HOME}", venv_bin=bin_dir)
    warm = launch_lines(directory, f"{bin_dir}/python" if bin_dir else "python3")
    return ("#!/bin/sh\n# Written by fedcloud (fl/orchestrator/scripts.py)\n"
            + supernode_shell_command(argv, env, before=warm) + "\n")


def start_command(directory: str, delay_s: float, hold_s: float = 0.0,
                  held: bool = False) -> str:
    """Start the supervisor in its own session; prints ``pid=<its PID>``.

    Args:
        directory: The participant's directory on the VM (absolute).
        delay_s: Pause before a restart.
        hold_s: How long after a node's death the SuperLink may refuse its key (a refused
            restart waits until then).
        held: The key may be held right now (a re-dispatch of a lost node): a refused first
            start also waits until ``hold_s`` after the supervisor's start.
    """
    # A simple command in the background: $! is setsid's PID, which execs the supervisor.
    return quiet(f"cd {shlex.quote(directory)} || exit 3\n"
                 f"setsid sh ./{SUPERVISOR_FILE} {delay_s:g} {math.ceil(hold_s)}"
                 f"{' held' if held else ''} </dev/null >/dev/null 2>&1 &\n"
                 'echo "pid=$!"\n')


def status_command(directory: str) -> str:
    """Print ``alive=0|1``, ``exits=<count>``, ``last=<last exit code>``, ``last_at=<epoch>``."""
    return (f"cd {shlex.quote(directory)} 2>/dev/null || {{ echo alive=0; exit 0; }}\n"
            + _ALIVE_FN
            + f"pg=$(cat {SUPERVISOR_PID} 2>/dev/null)\n"
            'if alive "$pg"; then echo alive=1; else echo alive=0; fi\n'
            f'if [ -e {EXITS_FILE} ]; then echo "exits=$(wc -l < {EXITS_FILE})"; '
            "else echo exits=0; fi\n"
            f"echo \"last=$(tail -n 1 {EXITS_FILE} 2>/dev/null | cut -d' ' -f2)\"\n"
            f"echo \"last_at=$(tail -n 1 {EXITS_FILE} 2>/dev/null | cut -d' ' -f3)\"\n")


def wait_command(directory: str, window_s: float, exits_seen: int = 0) -> str:
    """Wait on the VM, up to ``window_s``, for the SuperNode to join, exit, or lose its supervisor.

    Prints what :func:`status_command` prints, then ``joined=1`` once the log (rotated by
    :func:`prepare_command`) holds :data:`JOINED_LINE`, else ``joined=0``. It returns early on
    the first of: joined, more than ``exits_seen`` exits, the supervisor gone. The loop uses
    shell built-ins only (one ``sleep`` per step), so many waiting VMs cost little CPU.
    """
    steps = max(1, math.ceil(window_s / WAIT_STEP_S))
    return (f"cd {shlex.quote(directory)} 2>/dev/null || {{ echo alive=0; exit 0; }}\n"
            f"pg=$(cat {SUPERVISOR_PID} 2>/dev/null)\n"
            "joined() {\n"
            f"  [ -e {LOG_FILE} ] || return 1\n"
            f"  while IFS= read -r line; do case $line in *{shlex.quote(JOINED_LINE)}*) return 0;;"
            f" esac; done < {LOG_FILE}\n"
            "  return 1\n}\n"
            "count_exits() {\n"
            f"  n=0; [ -e {EXITS_FILE} ] || return 0\n"
            f"  while IFS= read -r _; do n=$((n + 1)); done < {EXITS_FILE}\n"
            "}\n"
            f"i=0\nwhile [ \"$i\" -lt {steps} ]; do\n"
            "  joined && break\n"
            f"  count_exits; [ \"$n\" -gt {int(exits_seen)} ] && break\n"
            '  if [ -z "$pg" ] || [ ! -e "/proc/$pg" ]; then break; fi\n'
            f"  sleep {WAIT_STEP_S:g}; i=$((i + 1))\n"
            "done\n"
            + status_command(directory)
            + "if joined; then echo joined=1; else echo joined=0; fi\n")


def stop_command(directory: str) -> str:
    """Stop the supervisor in ``directory`` and remove the node key (nothing to do: exit 0)."""
    return quiet(f"cd {shlex.quote(directory)} 2>/dev/null || exit 0\n{_STOP_BODY}")


def log_tail_command(directory: str) -> str:
    """Print the last lines of the SuperNode's log."""
    return remote_command(["tail", "-n", "3", f"{directory}/{LOG_FILE}"])


def parse_fields(text: str) -> dict[str, str]:
    """Return the ``key=value`` lines of a command's output (other lines are ignored)."""
    out = {}
    for line in text.splitlines():
        key, sep, value = line.partition("=")
        if sep:
            out[key.strip()] = value.strip()
    return out


@dataclass(frozen=True)
class NodeStatus:
    """A placement's state as seen over SSH."""

    supervisor_alive: bool
    exits: int
    last_exit: int | None
    last_exit_at: float | None = None
    joined: bool = False


def read_status(session: Session, directory: str) -> NodeStatus:
    """Read a placement's supervisor state over an open session."""
    return parse_status(session.run(status_command(directory)).stdout)


def wait_status(session: Session, directory: str, window_s: float,
                exits_seen: int = 0) -> NodeStatus:
    """Run :func:`wait_command` (bounded by ``window_s`` plus the command's own allowance)."""
    res = session.run(wait_command(directory, window_s, exits_seen),
                      timeout_s=window_s + WAIT_COMMAND_SLACK_S)
    return parse_status(res.stdout)


def parse_status(text: str) -> NodeStatus:
    """Read the output of :func:`status_command` or :func:`wait_command`."""
    fields = parse_fields(text)
    last = fields.get("last", "")
    exits = fields.get("exits", "")
    at = fields.get("last_at", "")
    return NodeStatus(supervisor_alive=fields.get("alive") == "1",
                      exits=int(exits) if exits.isdigit() else 0,
                      last_exit=int(last) if last.lstrip("-").isdigit() else None,
                      last_exit_at=float(at) if at.isdigit() else None,
                      joined=fields.get("joined") == "1")
