"""``fedcloud preview --stack NAME``: the Pulumi program's resources under the SDK's mocks, as JSON.

It runs the real ``__main__.py`` with ``pulumi.runtime.set_mocks`` (no engine, no cloud) and prints
every declared resource (type, name, parents, provider, input properties with secrets redacted),
the data-source calls and the stack exports, sorted, so that the output is deterministic and can
be kept as a golden file (``tests/golden/<stack>.json``). It is not ``pulumi preview``: it cannot
tell an update from a replacement nor see drift (see infra/README.md). Pulumi and the cloud SDKs
are imported only when the command runs.
"""

from __future__ import annotations

import argparse
import sys

from fedcloud.cli.main import common_parser


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add ``fedcloud preview``."""
    p = sub.add_parser(
        "preview", parents=[common_parser()],
        help="render the Pulumi program's resources under SDK mocks (deterministic JSON)",
        description="Run the Pulumi program under the SDK's mocks and print its resources and "
                    "exports as deterministic JSON. Not 'pulumi preview': no update/replace, "
                    "no drift.",
    )
    p.add_argument("--stack", required=True, metavar="NAME",
                   help="a stack in stacks/ (Pulumi.NAME.yaml)")
    p.add_argument("--out", metavar="PATH", help="write the JSON here instead of stdout")
    p.set_defaults(func=cmd_preview)


def cmd_preview(args: argparse.Namespace) -> int:
    """Render the stack; exit 1 when the program rejects the stack's config (shown in the JSON)."""
    from infra.preview import render_stack, to_json, write_atomic_text

    doc = render_stack(args.stack)
    text = to_json(doc)
    if args.out:
        write_atomic_text(args.out, text)
    else:
        sys.stdout.write(text)
    if "error" in doc:
        print(f"fedcloud: the program rejected stack '{args.stack}': {doc['error']}",
              file=sys.stderr)
        return 1
    return 0
