"""The auditor's client: `exchange audit report` / `query` print tables people read (JSON Lines
with --json), and the library functions the demo calls inside its own event loop."""

from __future__ import annotations

import asyncio
import json
import unicodedata
from pathlib import Path

import pytest
from audit_world import HRSS_REFUSED, MCA_ENTRIES, resident

from audit.client import export_log, format_access_report
from audit.config import AuditConfig
from audit.verify import verify_export
from exchange.cli import main
from exchange.tls import TlsFiles
from exchange.v1 import audit_pb2, audit_pb2_grpc

REPORT_HEADINGS = [
    "time (UTC)",
    "department",
    "operator",
    "certificate type",
    "purpose",
    "matter",
    "fields released",
    "outcome",
    "entry",
]


def connection(served: int, auditor: TlsFiles) -> list[str]:
    return [
        "--hub", f"127.0.0.1:{served}",
        "--ca", str(auditor.ca), "--cert", str(auditor.cert), "--key", str(auditor.key),
    ]  # fmt: skip


async def run(argv: list[str], capsys: pytest.CaptureFixture[str]) -> list[str]:
    assert await asyncio.to_thread(main, argv) == 0
    return capsys.readouterr().out.splitlines()


async def test_report_is_a_table_of_every_access_to_the_subject(
    served: int, auditor: TlsFiles, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = ["audit", "report", "--subject", resident(3).id, *connection(served, auditor)]
    header, rule, *rows = await run(argv, capsys)

    assert [h.strip() for h in header.split("  ") if h.strip()] == REPORT_HEADINGS
    assert set(rule) == {"-", " "}
    assert len(rows) == 1 + HRSS_REFUSED
    granted = [row for row in rows if " granted " in row]
    assert len(granted) == 1
    assert "MCA" in granted[0] and "clerk-3" in granted[0] and "MCA-2024-00003" in granted[0]
    assert "resident_identity" in granted[0] and "birth_registration" in granted[0]
    assert "birth_date, name" in granted[0]
    refused = [row for row in rows if "refused (PERMISSION_DENIED)" in row]
    assert len(refused) == HRSS_REFUSED and all("HRSS" in row for row in refused)
    assert resident(3).id not in "\n".join(rows)  # the subject is the report's, not a column


async def test_report_and_query_give_json_lines_with_json(
    served: int, auditor: TlsFiles, capsys: pytest.CaptureFixture[str]
) -> None:
    report = ["audit", "report", "--subject", resident(3).id, "--json"]
    lines = await run([*report, *connection(served, auditor)], capsys)
    entries = [json.loads(line) for line in lines]
    assert len(entries) == 1 + HRSS_REFUSED
    assert {e["subject"]["id"] for e in entries} == {resident(3).id}

    query = ["audit", "query", "--department", "HRSS", "--json"]
    lines = await run([*query, *connection(served, auditor)], capsys)
    assert [json.loads(line)["requester_department"] for line in lines] == ["HRSS"] * 10


async def test_query_table_names_the_event_and_the_subject(
    served: int, auditor: TlsFiles, capsys: pytest.CaptureFixture[str]
) -> None:
    query = ["audit", "query", "--department", "MCA", "--limit", "5"]
    header, _, *rows = await run([*query, *connection(served, auditor)], capsys)

    headings = [h.strip() for h in header.split("  ") if h.strip()]
    assert headings[:3] == ["time (UTC)", "event", "subject"]
    assert len(rows) == 5
    indexes = [int(row.split()[-1]) for row in rows]
    assert indexes == sorted(indexes, reverse=True) and len(set(indexes)) == 5  # newest first
    assert all(" lookup " in row and " MCA " in row for row in rows)
    assert any(resident(number).id in rows[0] for number in range(MCA_ENTRIES))


async def test_export_log_inside_a_running_loop_verifies_offline(
    stub: audit_pb2_grpc.AuditServiceStub, audit_config: AuditConfig, tmp_path: Path
) -> None:
    await stub.GetCheckpoint(audit_pb2.GetCheckpointRequest(fresh=True))
    out = tmp_path / "export.jsonl"

    written = await export_log(stub, out)

    result = verify_export(out, audit_config.public_key)
    assert written == result.entries == result.tree_size >= MCA_ENTRIES + HRSS_REFUSED
    part = tmp_path / "part.jsonl"
    assert await export_log(stub, part, from_index=5, to_index=20) == 15
    assert verify_export(part, audit_config.public_key).first_index == 5


def test_report_columns_line_up_with_chinese_text() -> None:
    entries = [
        audit_pb2.AuditEntry(
            index=index,
            requester_department=department,
            operator_id="窗口-07",
            certificate_type="出生医学证明",
            purpose="birth_registration",
            fields_released=["name"],
            outcome=audit_pb2.GRANTED,
            status="OK",
        )
        for index, department in enumerate(["民政局", "MCA", "人力资源和社会保障局"])
    ]
    for entry in entries:
        entry.time.FromSeconds(1_767_225_600)

    lines = format_access_report(entries).splitlines()

    def column_of(line: str, text: str) -> int:
        before = line[: line.index(text)]
        return sum(2 if unicodedata.east_asian_width(c) in "WF" else 1 for c in before)

    assert {column_of(line, "窗口-07") for line in lines[2:]} == {column_of(lines[0], "operator")}
    assert all(line.split()[-1] == str(i) for i, line in enumerate(lines[2:]))
    assert "2026-01-01 00:00:00" in lines[2]
    assert format_access_report([]) == "(no entries)"


def test_report_names_an_auditor_who_looked_at_the_subject() -> None:
    query = audit_pb2.AuditEntry(
        index=7,
        event="audit_query",
        caller="auditor-li",
        requester_department="EXCHANGE",
        outcome=audit_pb2.GRANTED,
        status="OK",
    )

    row = format_access_report([query]).splitlines()[2]

    assert "auditor-li" in row
    assert "(audit query)" in row
