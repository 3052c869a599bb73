"""``fedcloud auth``: link public clouds from credential files, and show which are linked.

* ``fedcloud auth add aws|gcp|azure --file PATH [--profile P] [--subscription ID] [--stack NAME]``
  parses the file, validates it with the cloud's real identity call, records the cloud as linked
  for the stack, and hands the credentials to Pulumi as secret stack config.
* ``fedcloud auth status [--stack NAME]`` lists the clouds, linked or not, with identity and time.
* ``fedcloud auth secret CLOUD --file PATH --key KEY`` writes one secret value to a pipe (for the
  printed ``... | pulumi config set --secret`` commands); it refuses to write to a terminal.

The cloud SDKs are imported inside the command functions (through ``infra.auth``'s validators).
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

from fedcloud.cli.main import common_parser
from fedcloud.core.config import ROOT, available_stacks
from fedcloud.core.errors import AuthError
from fedcloud.core.stack import StackConfig, load

_CLOUDS = ("aws", "gcp", "azure")


def register(sub: Any) -> None:
    """Add ``fedcloud auth`` and its subcommands to the CLI."""
    parser = sub.add_parser("auth", parents=[common_parser()],
                            help="link public clouds from credential files",
                            description=__doc__.splitlines()[0])
    actions = parser.add_subparsers(dest="auth_command", required=True, metavar="ACTION")

    add = actions.add_parser("add", parents=[common_parser()],
                             help="validate a credential file and link its cloud")
    add.add_argument("cloud", choices=_CLOUDS)
    _credential_args(add)
    _stack_args(add)
    add.set_defaults(func=run_add)

    status = actions.add_parser("status", parents=[common_parser()],
                                help="list the clouds, linked or not")
    _stack_args(status)
    status.set_defaults(func=run_status)

    secret = actions.add_parser("secret", parents=[common_parser()],
                                help="write one secret config value to a pipe")
    secret.add_argument("cloud", choices=_CLOUDS)
    _credential_args(secret)
    secret.add_argument("--key", required=True, metavar="KEY",
                        help="the Pulumi config key, e.g. aws:secretKey")
    secret.set_defaults(func=run_secret)


def _credential_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--file", required=True, metavar="PATH",
                        help="the credential file (AWS CSV/credentials, GCP key JSON, Azure SP "
                        "JSON)")
    parser.add_argument("--profile", metavar="P",
                        help="aws: profile of a credentials file, or user of a multi-user CSV")
    parser.add_argument("--subscription", metavar="ID",
                        help="azure: the subscription id (unless the file has subscriptionId)")


def _stack_args(parser: argparse.ArgumentParser) -> None:
    group = parser.add_mutually_exclusive_group()
    group.add_argument("--stack", metavar="NAME",
                       help="a stack in stacks/ (default: the only one there)")
    group.add_argument("--config", metavar="PATH", help="any stack file")


def _stack(args: argparse.Namespace) -> StackConfig:
    if args.stack is None and args.config is None:
        stacks = available_stacks()
        if len(stacks) != 1:
            raise AuthError(
                "no --stack given and stacks/ holds "
                f"{len(stacks) or 'no'} stack{'s' if len(stacks) != 1 else ''}.",
                f"pass --stack NAME ({', '.join(stacks)})." if stacks else
                "create stacks/Pulumi.NAME.yaml and pass --stack NAME.")
        return load(name=stacks[0])
    return load(name=args.stack, path=args.config)


def run_add(args: argparse.Namespace) -> int:
    """Validate the credential, record the link, hand the credential to Pulumi."""
    from infra import auth

    cfg = _stack(args)
    settings = cfg.auth
    record, credential = auth.link(args.cloud, args.file, cfg.state_dir, settings,
                                   profile=args.profile, subscription=args.subscription)
    ident = record.identity
    assert ident is not None
    name = f" ({ident.name})" if ident.name else ""
    print(f"{args.cloud} linked for stack {cfg.stack}: {ident.principal} on "
          f"{_SCOPE[args.cloud]} {ident.scope}{name}, checked {record.checked_at}.")
    handed = auth.hand_off(args.cloud, credential, cfg.stack, file=args.file,
                           profile=args.profile, subscription=args.subscription)
    if handed.ran:
        print(f"Pulumi stack config set for {cfg.stack} (secret values with --secret):")
        for command in handed.commands:
            print(f"  {command}")
    else:
        print("The pulumi CLI is not on PATH. To hand the credential to Pulumi as secret stack "
              f"config, run these in {ROOT} (secret values are read from the file by your "
              "shell, never shown):")
        for command in handed.commands:
            print(f"  {command}")
    return 0


_SCOPE = {"aws": "account", "gcp": "project", "azure": "subscription"}


def run_status(args: argparse.Namespace) -> int:
    """Print one line per cloud: linked or not, identity, when checked, last failure."""
    from infra import auth

    cfg = _stack(args)
    settings = cfg.auth
    records = auth.read_status(cfg.state_dir)
    only = "only linked clouds" if settings.only_linked else "all clouds (onlyLinked: false)"
    print(f"stack {cfg.stack}: the optimizer offers {only}")
    print(f"{'cloud':<6} {'linked':<6} {'identity':<48} {'scope':<38} checked")
    for cloud in auth.CLOUDS:
        rec = records[cloud]
        ident = rec.identity
        who = ident.principal if ident else "-"
        scope = f"{_SCOPE[cloud]} {ident.scope}" if ident else "-"
        print(f"{cloud:<6} {'yes' if rec.linked else 'no':<6} {who:<48} {scope:<38} "
              f"{rec.checked_at or '-'}")
        if rec.last_error:
            print(f"       last attempt {rec.last_attempt_at} failed: {rec.last_error}")
    return 0


def run_secret(args: argparse.Namespace) -> int:
    """Write one config value of a credential to stdout, which must not be a terminal."""
    from infra import auth

    if sys.stdout.isatty():
        raise AuthError("refusing to print a secret to a terminal.",
                        f"pipe it: fedcloud auth secret {args.cloud} --file {args.file} --key "
                        f"{args.key} | pulumi config set --secret {args.key}")
    credential = auth.load_credential(args.cloud, args.file, profile=args.profile,
                                      subscription=args.subscription)
    sys.stdout.write(auth.secret_value(args.cloud, args.key, credential))
    sys.stdout.flush()
    return 0
