"""`exchange pki`: the local CA from the command line.

init, issue, renew, revoke and list TLS identities (exchange/pki.py, exchange/revocation.py),
and create document signing keys. Errors (ValueError, OSError) become messages in exchange.cli.
"""

from __future__ import annotations

import argparse
import datetime as dt
from pathlib import Path

from exchange.ca_index import CertificateAuthority, CertificateIndex, parse_serial
from exchange.identity import Role
from exchange.pki import (
    DEFAULT_CA_NAME,
    DEFAULT_HOSTS,
    generate_signing_key,
    init_ca,
    issue_identity,
    renew_identity,
)
from exchange.revocation import REASONS, revoke_certificates


def add_cli(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add `exchange pki init | issue | renew | revoke | list | signing-key`."""
    pki = subparsers.add_parser("pki", help="local CA, TLS identities and signing keys")
    commands = pki.add_subparsers(dest="pki_command", required=True, metavar="PKI_COMMAND")

    init = commands.add_parser("init", help="create a local CA (ca.pem, ca.key) in DIR")
    init.add_argument("--dir", type=Path, required=True, help="CA directory")
    init.add_argument("--common-name", default=DEFAULT_CA_NAME, help="CA subject common name")
    init.set_defaults(run=_run_init)

    issue = commands.add_parser("issue", help="issue a TLS identity signed by the CA in DIR")
    issue.add_argument("--dir", type=Path, required=True, help="CA directory; output goes here")
    issue.add_argument("--name", required=True, help="common name, also a DNS SAN")
    issue.add_argument("--role", required=True, choices=[role.value for role in Role])
    issue.add_argument("--department", required=True, help="department code (EXCHANGE for hub)")
    issue.add_argument(
        "--host",
        action="append",
        dest="hosts",
        help=f"extra SAN, DNS name or IP (repeatable; default: {' '.join(DEFAULT_HOSTS)})",
    )
    issue.add_argument("--days", type=int, default=365, help="validity in days (default 365)")
    issue.set_defaults(run=_run_issue)

    renew = commands.add_parser(
        "renew", help="new certificate (and key) for an identity: same subject and SANs"
    )
    renew.add_argument("--dir", type=Path, required=True, help="CA directory")
    _add_target(renew)
    renew.add_argument("--days", type=int, help="validity in days (default: as before)")
    renew.add_argument(
        "--keep-key", action="store_true", help="certify the existing key instead of a new one"
    )
    renew.add_argument("--out", type=Path, help="write here instead of over the previous files")
    renew.add_argument(
        "--revoke-previous", action="store_true", help="revoke the replaced certificate now"
    )
    renew.set_defaults(run=_run_renew)

    revoke = commands.add_parser(
        "revoke", help="revoke certificates and publish the CA's CRL (DIR/ca.crl)"
    )
    revoke.add_argument("--dir", type=Path, required=True, help="CA directory")
    _add_target(revoke)
    revoke.add_argument("--reason", choices=list(REASONS), default="unspecified")
    revoke.set_defaults(run=_run_revoke)

    listing = commands.add_parser("list", help="certificates the CA issued, and their status")
    listing.add_argument("--dir", type=Path, required=True, help="CA directory")
    listing.set_defaults(run=_run_list)

    signing = commands.add_parser("signing-key", help="create an Ed25519 document signing key")
    signing.add_argument("--dir", type=Path, required=True, help="output directory")
    signing.add_argument("--name", required=True, help="file name stem, e.g. the department")
    signing.set_defaults(run=_run_signing_key)


def _run_init(args: argparse.Namespace) -> int:
    ca = init_ca(args.dir, args.common_name)
    print(ca.cert)
    print(ca.key)
    return 0


def _run_issue(args: argparse.Namespace) -> int:
    hosts = tuple(args.hosts) if args.hosts else DEFAULT_HOSTS
    files = issue_identity(
        args.dir, args.dir, args.name, args.role, args.department, hosts, args.days
    )
    print(files.cert)
    print(files.key)
    return 0


def _run_signing_key(args: argparse.Namespace) -> int:
    files = generate_signing_key(args.dir, args.name)
    print(files.private)
    print(files.public)
    print(f"key id: {files.key_id}")
    return 0


def _add_target(parser: argparse.ArgumentParser) -> None:
    target = parser.add_mutually_exclusive_group(required=True)
    target.add_argument("--name", help="the identity's name (CN)")
    target.add_argument("--serial", type=parse_serial, help="certificate serial number, hex")


def _run_renew(args: argparse.Namespace) -> int:
    files, previous = renew_identity(
        args.dir,
        name=args.name,
        serial=args.serial,
        days=args.days,
        new_key=not args.keep_key,
        out_dir=args.out,
        revoke_previous=args.revoke_previous,
    )
    print(files.cert)
    print(files.key)
    print(f"replaces serial {previous.serial_hex}" + (" (revoked)" if args.revoke_previous else ""))
    return 0


def _run_revoke(args: argparse.Namespace) -> int:
    revoked = revoke_certificates(args.dir, name=args.name, serial=args.serial, reason=args.reason)
    for record in revoked:
        print(f"revoked {record.serial_hex} {record.name} ({record.role}, {record.department})")
    print(CertificateAuthority.at(args.dir).crl)
    return 0


def _run_list(args: argparse.Namespace) -> int:
    now = dt.datetime.now(dt.UTC)
    rows = [("NAME", "ROLE", "DEPARTMENT", "SERIAL", "NOT_AFTER", "STATUS")]
    for record in CertificateIndex(args.dir).records():
        status = record.status(now)
        rows.append(
            (
                record.name,
                record.role,
                record.department,
                record.serial_hex,
                record.not_after.isoformat(timespec="seconds"),
                status.value,
            )
        )
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    for row in rows:
        print(
            "  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip()
        )
    return 0
