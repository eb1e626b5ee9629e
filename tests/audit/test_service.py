"""AuditService over real mutual TLS: queries, reports, checkpoints, proofs, export — and
every auditor call itself lands in the log."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import grpc
import grpc.aio
import pytest
import rfc6962
from audit_world import HRSS_REFUSED, MCA_ENTRIES, lookup_event, resident

from audit.config import AuditConfig
from audit.log import AuditLog
from audit.signing import verify_checkpoint
from audit.verify import verify_export
from exchange.cli import main
from exchange.pki import load_public_key_raw
from exchange.tls import TlsFiles
from exchange.v1 import audit_pb2, audit_pb2_grpc, common_pb2


def subject(number: int) -> common_pb2.Subject:
    return common_pb2.Subject(kind=common_pb2.RESIDENT_ID, id=resident(number).id)


async def test_query_by_subject_gives_decrypted_entries_newest_first(
    stub: audit_pb2_grpc.AuditServiceStub,
) -> None:
    response = await stub.QueryAccessLog(audit_pb2.QueryAccessLogRequest(subject=subject(3)))

    assert len(response.entries) == 1 + HRSS_REFUSED
    indexes = [entry.index for entry in response.entries]
    assert indexes == sorted(indexes, reverse=True)
    for entry in response.entries:
        assert entry.subject.id == resident(3).id
        assert entry.subject.kind == common_pb2.RESIDENT_ID
        assert rfc6962.leaf(entry.leaf_data) == entry.leaf_hash
        assert resident(3).id.encode() not in entry.leaf_data
    assert {e.requester_department for e in response.entries} == {"MCA", "HRSS"}


async def test_query_filters_and_pages(stub: audit_pb2_grpc.AuditServiceStub) -> None:
    refused = await stub.QueryAccessLog(
        audit_pb2.QueryAccessLogRequest(requester_department="HRSS", outcome=audit_pb2.REFUSED)
    )
    assert len(refused.entries) == HRSS_REFUSED
    assert all(e.reason == "no grant" and e.status == "PERMISSION_DENIED" for e in refused.entries)

    seen: list[int] = []
    request = audit_pb2.QueryAccessLogRequest(requester_department="MCA", page_size=15)
    while True:
        page = await stub.QueryAccessLog(request)
        seen.extend(entry.index for entry in page.entries)
        if not page.next_page_token:
            break
        request.page_token = page.next_page_token
    assert len(seen) == MCA_ENTRIES == len(set(seen))
    assert seen == sorted(seen, reverse=True)


async def test_pages_run_across_checkpointed_and_recent_entries(
    audit_log: AuditLog, stub: audit_pb2_grpc.AuditServiceStub
) -> None:
    await audit_log.checkpoint(fresh=True)  # entries so far are now in the query index
    await asyncio.gather(*(audit_log.append(lookup_event(i)) for i in range(100, 110)))
    newest: list[int] = []
    request = audit_pb2.QueryAccessLogRequest(requester_department="MCA", page_size=7)
    while True:
        page = await stub.QueryAccessLog(request)
        newest.extend(entry.index for entry in page.entries)
        if not page.next_page_token:
            break
        request.page_token = page.next_page_token
    assert len(newest) == MCA_ENTRIES + 10 == len(set(newest))
    assert newest == sorted(newest, reverse=True)

    report = await stub.SubjectAccessReport(
        audit_pb2.SubjectAccessReportRequest(subject=subject(3))
    )
    assert len(report.entries) == 1 + HRSS_REFUSED
    indexes = [entry.index for entry in report.entries]
    assert indexes == sorted(indexes)


@pytest.mark.parametrize(
    ("request_fields", "field"),
    [({"page_size": 5000}, "page_size"), ({"page_token": "not-a-token!"}, "page_token")],
)
async def test_bad_query_is_invalid_argument_naming_the_field(
    stub: audit_pb2_grpc.AuditServiceStub, request_fields: dict[str, Any], field: str
) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await stub.QueryAccessLog(audit_pb2.QueryAccessLogRequest(**request_fields))
    assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert field in (refused.value.details() or "")


async def test_subject_access_report_is_itself_audited(
    stub: audit_pb2_grpc.AuditServiceStub,
) -> None:
    report = await stub.SubjectAccessReport(
        audit_pb2.SubjectAccessReportRequest(subject=subject(7))
    )
    assert [e.requester_department for e in report.entries] == ["MCA"]
    assert report.entries[0].subject.id == resident(7).id

    queries = await stub.QueryAccessLog(audit_pb2.QueryAccessLogRequest(event="audit_query"))
    newest = queries.entries[0]
    assert newest.method == "/exchange.v1.AuditService/SubjectAccessReport"
    assert (newest.caller, newest.role, newest.outcome) == (
        "auditor-1",
        "auditor",
        audit_pb2.GRANTED,
    )
    assert newest.subject.id == resident(7).id  # whose data the auditor looked at


async def test_refused_auditor_call_is_audited_too(stub: audit_pb2_grpc.AuditServiceStub) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await stub.SubjectAccessReport(
            audit_pb2.SubjectAccessReportRequest(
                subject=common_pb2.Subject(kind=common_pb2.RESIDENT_ID, id="12345")
            )
        )
    assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "subject" in (refused.value.details() or "")
    with pytest.raises(grpc.aio.AioRpcError) as beyond:
        await stub.GetInclusionProof(audit_pb2.GetInclusionProofRequest(index=10**6))
    assert beyond.value.code() == grpc.StatusCode.OUT_OF_RANGE

    queries = await stub.QueryAccessLog(
        audit_pb2.QueryAccessLogRequest(event="audit_query", outcome=audit_pb2.REFUSED)
    )
    assert [e.method.rsplit("/", 1)[1] for e in queries.entries] == [
        "GetInclusionProof",
        "SubjectAccessReport",
    ]
    assert queries.entries[0].status == "OUT_OF_RANGE"


async def test_checkpoint_and_proofs_verify_with_the_public_key(
    stub: audit_pb2_grpc.AuditServiceStub, audit_config: AuditConfig
) -> None:
    public_key = load_public_key_raw(audit_config.public_key)
    first = verify_checkpoint(
        await stub.GetCheckpoint(audit_pb2.GetCheckpointRequest(fresh=True)), public_key
    )
    second = verify_checkpoint(
        await stub.GetCheckpoint(audit_pb2.GetCheckpointRequest(fresh=True)), public_key
    )
    assert first.tree_size == MCA_ENTRIES + HRSS_REFUSED
    assert second.tree_size == first.tree_size + 1  # the first GetCheckpoint was audited

    inclusion = await stub.GetInclusionProof(audit_pb2.GetInclusionProofRequest(index=5))
    assert inclusion.tree_size == second.tree_size
    root = rfc6962.inclusion_root(5, inclusion.tree_size, inclusion.leaf_hash, inclusion.hashes)
    assert root == second.root_hash

    consistency = await stub.GetConsistencyProof(
        audit_pb2.GetConsistencyProofRequest(
            first_size=first.tree_size, second_size=second.tree_size
        )
    )
    roots = rfc6962.consistency_roots(
        first.tree_size, second.tree_size, first.root_hash, consistency.hashes
    )
    assert roots == (first.root_hash, second.root_hash)

    with pytest.raises(grpc.aio.AioRpcError) as inverted:
        await stub.GetConsistencyProof(
            audit_pb2.GetConsistencyProofRequest(first_size=9, second_size=4)
        )
    assert inverted.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "first_size" in (inverted.value.details() or "")


async def test_export_through_the_cli_verifies_offline(
    served: int, auditor: TlsFiles, audit_config: AuditConfig, tmp_path: Path
) -> None:
    connection = [
        "--hub", f"127.0.0.1:{served}",
        "--ca", str(auditor.ca), "--cert", str(auditor.cert), "--key", str(auditor.key),
    ]  # fmt: skip
    assert await asyncio.to_thread(main, ["audit", "checkpoint", "--fresh", *connection]) == 0
    whole, part = tmp_path / "whole.jsonl", tmp_path / "part.jsonl"
    assert await asyncio.to_thread(main, ["audit", "export", "--out", str(whole), *connection]) == 0
    export_part = ["audit", "export", "--out", str(part), "--from", "12", "--to", "30"]
    assert await asyncio.to_thread(main, [*export_part, *connection]) == 0

    result = verify_export(whole, audit_config.public_key)
    assert result.entries == MCA_ENTRIES + HRSS_REFUSED
    partial = verify_export(part, audit_config.public_key)
    assert (partial.first_index, partial.entries, partial.tree_size) == (12, 18, 30)
    first_entry = json.loads(whole.read_bytes().splitlines()[0])
    assert first_entry["index"] == 0 and "subject_sealed" in first_entry["entry"]
