"""The auditor's client: `exchange audit {query,report,checkpoint,export}` over mTLS, and the
library functions behind them that other programs (the demo) call inside their own loop.

Each command connects to a hub's AuditService with the auditor's certificate, prints what it
got — a table for people, JSON Lines with `--json` — and turns gRPC errors into a one-line
message and exit code 1. `export` writes the same JSON Lines file as the hub's own export,
ready for `exchange audit verify`.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import json
import sys
import unicodedata
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path

import grpc
import grpc.aio
from google.protobuf import json_format

from audit import merkle
from audit.export import FrontierRecord, checkpoint_line, entry_line, frontier_line
from audit.signing import SignatureError, verify_checkpoint
from exchange.pki import load_public_key_raw
from exchange.tls import TlsFiles, channel_credentials
from exchange.v1 import audit_pb2, audit_pb2_grpc, common_pb2

Command = Callable[[audit_pb2_grpc.AuditServiceStub, argparse.Namespace], Awaitable[int]]


def add_client_commands(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add the online sub-commands to `exchange audit`."""
    query = _command(commands, "query", "entries matching filters, newest first", _query)
    _subject_options(query, required=False)
    for option in ("department", "issuer", "certificate-type", "purpose", "event"):
        query.add_argument(f"--{option}", default="")
    query.add_argument("--outcome", choices=("granted", "refused", "failed"))
    _window_options(query)
    query.add_argument("--limit", type=int, default=100, help="entries to print (all pages)")
    _json_option(query)

    report = _command(commands, "report", "every access to one subject", _report)
    _subject_options(report, required=True)
    _window_options(report)
    _json_option(report)

    checkpoint = _command(commands, "checkpoint", "the latest signed checkpoint", _checkpoint)
    checkpoint.add_argument("--fresh", action="store_true", help="sign one over everything now")
    checkpoint.add_argument("--hub-key", type=Path, help="check the signature with this key")

    export = _command(commands, "export", "write the log as JSON Lines", _export)
    export.add_argument("--out", type=Path, required=True)
    export.add_argument("--from", dest="from_index", type=int, default=0)
    export.add_argument("--to", dest="to_index", type=int, default=0, help="0: latest checkpoint")


def _command(
    commands: argparse._SubParsersAction[argparse.ArgumentParser],
    name: str,
    summary: str,
    command: Command,
) -> argparse.ArgumentParser:
    parser = commands.add_parser(name, help=summary)
    parser.add_argument("--hub", required=True, help="HOST:PORT of the hub")
    parser.add_argument("--ca", type=Path, required=True, help="CA certificate (PEM)")
    parser.add_argument("--cert", type=Path, required=True, help="auditor certificate (PEM)")
    parser.add_argument("--key", type=Path, required=True, help="auditor private key (PEM)")
    parser.set_defaults(run=lambda args: asyncio.run(_call(command, args)))
    return parser


def _subject_options(parser: argparse.ArgumentParser, *, required: bool) -> None:
    parser.add_argument("--subject", required=required, help="resident ID or credit code")
    parser.add_argument(
        "--subject-kind",
        default="RESIDENT_ID",
        choices=("RESIDENT_ID", "UNIFIED_SOCIAL_CREDIT_CODE"),
    )


def _json_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--json", action="store_true", help="one JSON object per entry instead of a table"
    )


def _window_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--since", type=dt.datetime.fromisoformat, help="ISO time, inclusive")
    parser.add_argument("--until", type=dt.datetime.fromisoformat, help="ISO time, exclusive")


async def _call(command: Command, args: argparse.Namespace) -> int:
    files = TlsFiles(ca=args.ca, cert=args.cert, key=args.key)
    async with grpc.aio.secure_channel(args.hub, channel_credentials(files)) as channel:
        try:
            return await command(audit_pb2_grpc.AuditServiceStub(channel), args)
        except grpc.aio.AioRpcError as exc:
            print(f"exchange audit: {exc.code().name}: {exc.details()}", file=sys.stderr)
            return 1


async def _query(stub: audit_pb2_grpc.AuditServiceStub, args: argparse.Namespace) -> int:
    request = audit_pb2.QueryAccessLogRequest(
        requester_department=args.department,
        issuer=args.issuer,
        certificate_type=args.certificate_type,
        purpose=args.purpose,
        event=args.event,
        outcome=audit_pb2.Outcome.Value((args.outcome or "outcome_unspecified").upper()),
        page_size=min(args.limit, 1000),
    )
    if args.subject:
        request.subject.CopyFrom(_subject(args))
    _window(request, args)
    entries: list[audit_pb2.AuditEntry] = []
    while len(entries) < args.limit:
        response = await stub.QueryAccessLog(request)
        entries.extend(response.entries[: args.limit - len(entries)])
        if not response.next_page_token:
            break
        request.page_token = response.next_page_token
    if args.json:
        _print_json(entries)
    else:
        print(format_entries(entries))
    return 0


async def _report(stub: audit_pb2_grpc.AuditServiceStub, args: argparse.Namespace) -> int:
    request = audit_pb2.SubjectAccessReportRequest(subject=_subject(args))
    _window(request, args)
    response = await stub.SubjectAccessReport(request)
    if args.json:
        _print_json(response.entries)
    else:
        print(format_access_report(response.entries))
    print(f"{len(response.entries)} entries", file=sys.stderr)
    return 0


async def _checkpoint(stub: audit_pb2_grpc.AuditServiceStub, args: argparse.Namespace) -> int:
    signed = await stub.GetCheckpoint(audit_pb2.GetCheckpointRequest(fresh=args.fresh))
    checkpoint = audit_pb2.Checkpoint.FromString(signed.checkpoint)
    if args.hub_key is not None:
        try:
            verify_checkpoint(signed, load_public_key_raw(args.hub_key))
        except SignatureError as exc:
            print(f"FAILED: {exc}")
            return 1
    print(
        json.dumps(
            {
                "log_id": checkpoint.log_id,
                "tree_size": checkpoint.tree_size,
                "root_hash": checkpoint.root_hash.hex(),
                "time": checkpoint.time.ToDatetime(dt.UTC).isoformat(),
                "signature_verified": args.hub_key is not None,
            }
        )
    )
    return 0


async def _export(stub: audit_pb2_grpc.AuditServiceStub, args: argparse.Namespace) -> int:
    entries = await export_log(stub, args.out, args.from_index, args.to_index)
    print(f"wrote {entries} entries to {args.out}", file=sys.stderr)
    return 0


async def export_log(
    stub: audit_pb2_grpc.AuditServiceStub, out: Path, from_index: int = 0, to_index: int = 0
) -> int:
    """Write entries [from_index, to_index) of the log behind `stub` to `out` as JSON Lines,
    with the signed checkpoints that cover them, for `exchange audit verify`; returns how
    many entries were written. to_index=0 means up to the latest checkpoint."""
    entries = 0
    with out.open("wb") as export:
        if from_index:
            # The frontier before the range, from the inclusion proof of its last entry;
            # the export's final checkpoint is what makes it trustworthy.
            proof = await stub.GetInclusionProof(
                audit_pb2.GetInclusionProofRequest(index=from_index - 1, tree_size=from_index)
            )
            frontier = merkle.frontier_from_inclusion(
                from_index, proof.leaf_hash, list(proof.hashes)
            )
            export.write(frontier_line(FrontierRecord(frontier.size, tuple(frontier.hashes))))
        request = audit_pb2.ExportLogRequest(from_index=from_index, to_index=to_index)
        async for record in stub.ExportLog(request):
            if record.HasField("entry"):
                entry = record.entry
                export.write(entry_line(entry.index, entry.leaf_hash, entry.leaf_data))
                entries += 1
            else:
                export.write(checkpoint_line(record.checkpoint))
    return entries


def _subject(args: argparse.Namespace) -> common_pb2.Subject:
    return common_pb2.Subject(kind=common_pb2.SubjectKind.Value(args.subject_kind), id=args.subject)


def _window(
    request: audit_pb2.QueryAccessLogRequest | audit_pb2.SubjectAccessReportRequest,
    args: argparse.Namespace,
) -> None:
    for name in ("since", "until"):
        moment: dt.datetime | None = getattr(args, name)
        if moment is not None:
            if moment.tzinfo is None:
                moment = moment.replace(tzinfo=dt.UTC)
            getattr(request, name).FromDatetime(moment)


def _print_json(entries: Sequence[audit_pb2.AuditEntry]) -> None:
    for entry in entries:
        shown = json_format.MessageToDict(entry, preserving_proto_field_name=True)
        shown.pop("leaf_data", None)
        shown["leaf_hash"] = entry.leaf_hash.hex()
        print(json.dumps(shown, ensure_ascii=False, sort_keys=True))


# (heading, value) of the columns of a subject's access report.
_REPORT_COLUMNS: tuple[tuple[str, Callable[[audit_pb2.AuditEntry], str]], ...] = (
    ("time (UTC)", lambda e: e.time.ToDatetime(dt.UTC).strftime("%Y-%m-%d %H:%M:%S")),
    ("department", lambda e: e.requester_department),
    # An auditor's query of a subject is an access too: name who and what kind of event.
    ("operator", lambda e: e.operator_id or e.caller),
    ("certificate type", lambda e: e.certificate_type or f"({e.event.replace('_', ' ')})"),
    ("purpose", lambda e: e.purpose),
    ("matter", lambda e: e.matter_id),
    ("fields released", lambda e: ", ".join(e.fields_released)),
    ("outcome", lambda e: _outcome(e)),
    ("entry", lambda e: str(e.index)),
)
# A query spans subjects and kinds of event: those come first.
_QUERY_COLUMNS = (
    _REPORT_COLUMNS[0],
    ("event", lambda e: e.event),
    ("subject", lambda e: e.subject.id if e.HasField("subject") else ""),
    *_REPORT_COLUMNS[1:],
)


def format_access_report(entries: Sequence[audit_pb2.AuditEntry]) -> str:
    """A subject's access report as a table people read: who (department, operator) saw
    what (certificate type, fields released), when, why (purpose, matter), with what
    outcome, and the entry's index in the log to prove it."""
    return _table(_REPORT_COLUMNS, entries)


def format_entries(entries: Sequence[audit_pb2.AuditEntry]) -> str:
    """Query results as a table: the report's columns plus the event and the subject."""
    return _table(_QUERY_COLUMNS, entries)


def _outcome(entry: audit_pb2.AuditEntry) -> str:
    outcome = audit_pb2.Outcome.Name(entry.outcome).lower()
    return outcome if entry.status in ("", "OK") else f"{outcome} ({entry.status})"


def _table(
    columns: Sequence[tuple[str, Callable[[audit_pb2.AuditEntry], str]]],
    entries: Sequence[audit_pb2.AuditEntry],
) -> str:
    if not entries:
        return "(no entries)"
    rows = [[heading for heading, _ in columns]]
    rows += [[value(entry) or "-" for _, value in columns] for entry in entries]
    widths = [max(_width(row[i]) for row in rows) for i in range(len(columns))]
    rows.insert(1, ["-" * width for width in widths])
    return "\n".join(
        "  ".join(_pad(cell, width) for cell, width in zip(row, widths, strict=True)).rstrip()
        for row in rows
    )


def _width(text: str) -> int:
    """Terminal columns `text` takes: Chinese characters take two."""
    return sum(2 if unicodedata.east_asian_width(char) in "WF" else 1 for char in text)


def _pad(text: str, width: int) -> str:
    return text + " " * (width - _width(text))
