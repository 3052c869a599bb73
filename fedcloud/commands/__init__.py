"""Subcommands of the ``fedcloud`` CLI, one module each.

Each module defines ``register(subparsers)`` that adds its parser(s) and sets ``func`` to a
callable ``(argparse.Namespace) -> int``. Module top levels import nothing heavy (no torch,
flwr, pulumi or cloud SDKs): those are imported inside the command functions.
"""
