"""The `exchange` command: one entry point, one sub-command group per part of the system.

Each part adds its own commands through `add_cli(subparsers)` and sets `run`, a function
from the parsed arguments to an exit code. Errors become messages here, at the boundary.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys
from collections.abc import Callable

# Each module defines add_cli(subparsers) -> None.
COMMAND_MODULES = (
    "exchange.pki_cli",  # exchange pki init | issue | renew | revoke | list | signing-key
    "exchange.consent",  # exchange consent issue
    "exchange.hub.cli",  # exchange serve
    "adapters.cli",  # exchange adapter serve
    "audit.cli",  # exchange audit query | report | checkpoint | export | verify
    "exchange.demo",  # exchange demo
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="exchange",
        description="Once-Only Exchange: certificates shared between departments, "
        "with proof of origin and a verifiable access log.",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="log debug detail")
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name in COMMAND_MODULES:
        importlib.import_module(name).add_cli(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.WARNING,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    run: Callable[[argparse.Namespace], int] = args.run
    try:
        return run(args)
    except KeyboardInterrupt:
        return 130
    except (OSError, ValueError) as exc:
        print(f"exchange: error: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
