"""The ``fedcloud`` command line: a thin dispatcher over ``fedcloud.commands``.

Errors the user can act on (:class:`fedcloud.core.errors.FedcloudError`) print as one line on
stderr with a non-zero exit; ``--debug`` shows the traceback instead.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

from fedcloud.core.errors import FedcloudError
from fedcloud.core.stack import StackConfig, load

# One entry per subcommand module; each registers its own parser(s).
COMMANDS: list[str] = [
    "fedcloud.cli.auth",
    "fedcloud.cli.models",
    "fedcloud.cli.plan",
    "fedcloud.cli.up",
    "fedcloud.cli.preview",
]


def common_parser() -> argparse.ArgumentParser:
    """Return a parent parser with the options every subcommand accepts."""
    parent = argparse.ArgumentParser(add_help=False)
    parent.add_argument("--debug", action="store_true", default=argparse.SUPPRESS,
                        help="show tracebacks instead of one-line errors")
    return parent


def add_stack_args(parser: argparse.ArgumentParser) -> None:
    """Add the mutually exclusive ``--stack NAME`` / ``--config PATH`` options."""
    group = parser.add_mutually_exclusive_group(required=True)
    group.add_argument("--stack", metavar="NAME", help="a stack in stacks/ (Pulumi.NAME.yaml)")
    group.add_argument("--config", metavar="PATH", help="any stack file")


def stack_from_args(args: argparse.Namespace) -> StackConfig:
    """Read and parse the stack named by ``--stack`` or ``--config``."""
    return load(name=getattr(args, "stack", None), path=getattr(args, "config", None))


def build_parser() -> argparse.ArgumentParser:
    """Build the full parser with every registered subcommand."""
    parser = argparse.ArgumentParser(
        prog="fedcloud",
        description="Cross-cloud federated learning: plan, deploy, train, track.",
        parents=[common_parser()],
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name in COMMANDS:
        importlib.import_module(name).register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the CLI and return the process exit code."""
    parser = build_parser()
    args = parser.parse_args(argv)
    debug = bool(getattr(args, "debug", False))
    try:
        return int(args.func(args) or 0)
    except FedcloudError as exc:
        if debug:
            raise
        print(f"fedcloud: error: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print("fedcloud: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
