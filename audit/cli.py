"""`exchange audit …`: offline verification and key creation, and the auditor's client.

    exchange audit init-keys --dir DIR
    exchange audit verify FILE --hub-key PUB.pem
    exchange audit {query,report,checkpoint,export} --hub HOST:PORT --ca --cert --key …

`verify` needs nothing but the export and the log's public key; it prints
`ok: N entries, root <hex>` or `FAILED at index N: <what>` (exit 1).
"""

from __future__ import annotations

import argparse
from pathlib import Path

from audit.client import add_client_commands
from audit.config import create_keys
from audit.verify import VerificationError, verify_export


def add_cli(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add `exchange audit` and its sub-commands."""
    parser = subparsers.add_parser("audit", help="verify, query and export the audit log")
    commands = parser.add_subparsers(dest="audit_command", required=True, metavar="COMMAND")

    init_keys = commands.add_parser("init-keys", help="create the log's signing key and secrets")
    init_keys.add_argument("--dir", type=Path, required=True, help="directory for the key files")
    init_keys.set_defaults(run=_run_init_keys)

    verify = commands.add_parser("verify", help="verify an export offline")
    verify.add_argument("file", type=Path, help="export file (JSON Lines)")
    verify.add_argument(
        "--hub-key", type=Path, required=True, help="the log's public key (PEM, audit-log.sign.pub)"
    )
    verify.set_defaults(run=_run_verify)

    add_client_commands(commands)


def _run_init_keys(args: argparse.Namespace) -> int:
    config = create_keys(args.dir)
    print(f"log key:    {config.log_key}")
    print(f"public key: {config.public_key}")
    print(f"secrets:    {config.secrets}")
    return 0


def _run_verify(args: argparse.Namespace) -> int:
    try:
        result = verify_export(args.file, args.hub_key)
    except VerificationError as exc:
        print(str(exc) if exc.index is not None else f"FAILED: {exc.problem}")
        return 1
    print(f"ok: {result.entries} entries, root {result.root.hex()}")
    if result.first_index:
        # A partial export proves its range, not that nothing came before it.
        print(f"note: entries {result.first_index}..{result.tree_size - 1} only; the export starts")
        print(f"      after {result.first_index} entries it does not contain")
    return 0
