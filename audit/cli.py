"""`exchange audit …`: offline verification and key creation, and the auditor's client.

    exchange audit init-keys --dir DIR
    exchange audit verify FILE --hub-key PUB.pem
    exchange audit verify-database URL --hub-key PUB.pem
    exchange audit {query,report,checkpoint,export} --hub HOST:PORT --ca --cert --key …

`verify` needs nothing but the export and the log's public key; it prints
`ok: N entries, root <hex>` or `FAILED at index N: <what>` (exit 1). `verify-database` checks
the stored log itself, for an operator with read access to the hub's database: the same,
plus what only the tables can get wrong (audit/database_check.py).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import sqlalchemy as sa

from audit.client import add_client_commands
from audit.config import create_keys
from audit.database_check import verify_database
from audit.verify import VerificationError, verify_export
from exchange.db import make_engine
from exchange.pki import load_public_key_raw


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

    verify_db = commands.add_parser(
        "verify-database", help="verify the stored log in the hub's database"
    )
    verify_db.add_argument(
        "database", help="the hub's database URL (its config's `database`), e.g. sqlite:///x.db"
    )
    verify_db.add_argument(
        "--hub-key", type=Path, required=True, help="the log's public key (PEM, audit-log.sign.pub)"
    )
    verify_db.set_defaults(run=_run_verify_database)

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
        return _failed(exc)
    print(f"ok: {result.entries} entries, root {result.root.hex()}")
    if result.first_index:
        # A partial export proves its range, not that nothing came before it.
        print(f"note: entries {result.first_index}..{result.tree_size - 1} only; the export starts")
        print(f"      after {result.first_index} entries it does not contain")
    return 0


def _run_verify_database(args: argparse.Namespace) -> int:
    engine = make_engine(args.database)
    try:
        result = verify_database(engine, load_public_key_raw(args.hub_key))
    except VerificationError as exc:
        return _failed(exc)
    except sa.exc.SQLAlchemyError as exc:
        print(f"exchange: error: cannot read the audit log: {str(exc).splitlines()[0]}")
        return 1
    finally:
        engine.dispose()
    print(f"ok: {result.entries} entries, root {result.root.hex()}")
    return 0


def _failed(exc: VerificationError) -> int:
    print(str(exc) if exc.index is not None else f"FAILED: {exc.problem}")
    return 1
