"""AuditService: what auditors ask the log — entries, subject reports, checkpoints, proofs,
exports. The gate lets only auditor identities in; every call is itself written to the log
(EventKind.AUDIT_QUERY) before its answer leaves.

QueryAccessLog returns the newest entries first; its page token is the URL-safe base64 of
the last index returned. Entries returned carry the subject in clear (decrypted from the
entry's sealed value) next to the exact leaf bytes and leaf hash.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import datetime as dt
import json
import logging
import time
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass

import grpc
import grpc.aio
from google.protobuf import timestamp_pb2

from audit.entry import format_time
from audit.events import AuditEvent, EventKind, Outcome, SubjectId
from audit.export import EntryRecord, ExportRecord, FrontierRecord
from audit.kafka_message import audit_entry_message
from audit.keys import SealError
from audit.log import AuditLog
from audit.queries import EntryQuery, StoredEntry
from exchange.errors import (
    as_exchange_error,
    data_loss,
    invalid_argument,
    resource_exhausted,
    translate_errors,
)
from exchange.identity import current_identity
from exchange.subject import validate_subject
from exchange.v1 import audit_pb2, audit_pb2_grpc, common_pb2

log = logging.getLogger(__name__)

SERVICE = "/exchange.v1.AuditService/"
DEFAULT_PAGE_SIZE = 100
MAX_PAGE_SIZE = 1000
MAX_REPORT_ENTRIES = 10_000
# Statuses that mean the auditor's request was refused rather than the log failing.
_REFUSALS = {
    grpc.StatusCode.INVALID_ARGUMENT,
    grpc.StatusCode.OUT_OF_RANGE,
    grpc.StatusCode.PERMISSION_DENIED,
    grpc.StatusCode.UNAUTHENTICATED,
    grpc.StatusCode.NOT_FOUND,
    grpc.StatusCode.RESOURCE_EXHAUSTED,
}


@dataclass
class _Call:
    """What a handler learns about the call that its audit entry should name."""

    subject: SubjectId | None = None


class AuditServicer(audit_pb2_grpc.AuditServiceServicer):
    """The AuditService over one AuditLog."""

    def __init__(self, log: AuditLog) -> None:
        self.log = log

    async def QueryAccessLog(
        self, request: audit_pb2.QueryAccessLogRequest, context: grpc.aio.ServicerContext
    ) -> audit_pb2.QueryAccessLogResponse:
        """A page of entries matching the request's filters, newest first."""
        async with translate_errors(context), self._audited("QueryAccessLog", request) as call:
            subject = _subject(request.subject) if request.HasField("subject") else None
            call.subject = subject
            page_size = request.page_size or DEFAULT_PAGE_SIZE
            if page_size > MAX_PAGE_SIZE:
                raise invalid_argument(f"page_size: at most {MAX_PAGE_SIZE}, got {page_size}")
            query = EntryQuery(
                subject_ref=self.log.keys.subject_ref(subject) if subject else "",
                requester_department=request.requester_department,
                issuer=request.issuer,
                certificate_type=request.certificate_type,
                purpose=request.purpose,
                outcome=_outcome(request.outcome),
                event=request.event,
                since=_time(request, "since"),
                until=_time(request, "until"),
                after_index=_page_position(request.page_token),
                limit=page_size + 1,
            )
            found = await asyncio.to_thread(self.log.reader.find, query)
            page = found[:page_size]
            token = _page_token(page[-1].index) if len(found) > page_size else ""
            return audit_pb2.QueryAccessLogResponse(
                entries=self._messages(page), next_page_token=token
            )
        raise AssertionError("unreachable")  # translate_errors aborts the call

    async def SubjectAccessReport(
        self, request: audit_pb2.SubjectAccessReportRequest, context: grpc.aio.ServicerContext
    ) -> audit_pb2.SubjectAccessReportResponse:
        """Every entry about one subject in the time window, oldest first."""
        async with translate_errors(context), self._audited("SubjectAccessReport", request) as call:
            if not request.HasField("subject"):
                raise invalid_argument("subject: required")
            subject = call.subject = _subject(request.subject)
            query = EntryQuery(
                subject_ref=self.log.keys.subject_ref(subject),
                since=_time(request, "since"),
                until=_time(request, "until"),
                oldest_first=True,
                limit=MAX_REPORT_ENTRIES + 1,
            )
            found = await asyncio.to_thread(self.log.reader.find, query)
            if len(found) > MAX_REPORT_ENTRIES:
                raise resource_exhausted(
                    f"more than {MAX_REPORT_ENTRIES} entries for this subject; "
                    "narrow the window with since/until"
                )
            return audit_pb2.SubjectAccessReportResponse(entries=self._messages(found))
        raise AssertionError("unreachable")

    async def GetCheckpoint(
        self, request: audit_pb2.GetCheckpointRequest, context: grpc.aio.ServicerContext
    ) -> audit_pb2.SignedCheckpoint:
        """The latest signed checkpoint, or a fresh one over everything appended so far."""
        async with translate_errors(context), self._audited("GetCheckpoint", request):
            return await self.log.checkpoint(fresh=request.fresh)
        raise AssertionError("unreachable")

    async def GetInclusionProof(
        self, request: audit_pb2.GetInclusionProofRequest, context: grpc.aio.ServicerContext
    ) -> audit_pb2.InclusionProof:
        """RFC 6962 audit path of one entry in a checkpointed tree."""
        async with translate_errors(context), self._audited("GetInclusionProof", request):
            return await asyncio.to_thread(
                self.log.reader.inclusion_proof, request.index, request.tree_size
            )
        raise AssertionError("unreachable")

    async def GetConsistencyProof(
        self, request: audit_pb2.GetConsistencyProofRequest, context: grpc.aio.ServicerContext
    ) -> audit_pb2.ConsistencyProof:
        """RFC 6962 consistency proof between two checkpointed tree sizes."""
        async with translate_errors(context), self._audited("GetConsistencyProof", request):
            return await asyncio.to_thread(
                self.log.reader.consistency_proof, request.first_size, request.second_size
            )
        raise AssertionError("unreachable")

    async def ExportLog(
        self, request: audit_pb2.ExportLogRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[audit_pb2.ExportLogRecord]:
        """Entries [from_index, to_index) with the checkpoints inside the range, then the
        checkpoint of size to_index (0: the latest)."""
        async with translate_errors(context):
            records = self.log.export_records(request.from_index, request.to_index)
            async with self._audited("ExportLog", request):
                first = await anext(records, None)  # range errors surface here, audited
            pending: list[ExportRecord] = [] if first is None else [first]
            async for record in _chain(pending, records):
                if isinstance(record, EntryRecord):
                    message = self._message(
                        StoredEntry(record.index, record.leaf, record.leaf_hash)
                    )
                    yield audit_pb2.ExportLogRecord(entry=message)
                elif isinstance(record, FrontierRecord):
                    continue  # not in the contract; offline exports carry it (audit.export)
                else:
                    yield audit_pb2.ExportLogRecord(checkpoint=record)

    @contextlib.asynccontextmanager
    async def _audited(self, rpc: str, request: object) -> AsyncIterator[_Call]:
        """Write the auditor's call to the log: granted when the body finishes, refused or
        failed (with the status and reason) when it raises."""
        identity = current_identity()
        started = time.perf_counter()
        call = _Call()

        def event(outcome: Outcome, status: str, reason: str = "") -> AuditEvent:
            return AuditEvent(
                event=EventKind.AUDIT_QUERY,
                outcome=outcome,
                status=status,
                method=SERVICE + rpc,
                caller=identity.name,
                requester_department=identity.department,
                role=str(identity.role),
                subject=call.subject,
                certificate_type=str(getattr(request, "certificate_type", "")),
                issuer=str(getattr(request, "issuer", "")),
                purpose=str(getattr(request, "purpose", "")),
                reason=reason,
                latency_us=int((time.perf_counter() - started) * 1e6),
            )

        try:
            yield call
        except Exception as exc:
            error = as_exchange_error(exc)
            outcome = Outcome.REFUSED if error.status in _REFUSALS else Outcome.FAILED
            await self.log.append(event(outcome, error.status.name, error.message))
            raise error from exc
        await self.log.append(event(Outcome.GRANTED, "OK"))

    def _messages(self, entries: Sequence[StoredEntry]) -> list[audit_pb2.AuditEntry]:
        return [self._message(entry) for entry in entries]

    def _message(self, stored: StoredEntry) -> audit_pb2.AuditEntry:
        try:
            message = audit_entry_message(stored.index, stored.leaf)
        except ValueError:
            raise data_loss(
                f"entry {stored.index} does not match its place in the log; the stored log "
                "was altered (verify it with an export)"
            ) from None
        message.leaf_hash = stored.leaf_hash  # as recorded; a verifier compares the two
        sealed = _sealed(stored.leaf)
        if sealed:
            try:
                subject = self.log.keys.unseal(base64.b64decode(sealed), stored.index)
                kind = common_pb2.SubjectKind.Value(subject.kind)
            except (SealError, binascii.Error, ValueError):
                # One damaged entry must not fail the whole page; verification names it.
                log.warning("audit entry %d: sealed subject does not open", stored.index)
            else:
                message.subject.CopyFrom(common_pb2.Subject(kind=kind, id=subject.id))
        return message


async def _chain(
    first: list[ExportRecord], rest: AsyncIterator[ExportRecord]
) -> AsyncIterator[ExportRecord]:
    for record in first:
        yield record
    async for record in rest:
        yield record


def _sealed(leaf: bytes) -> str:
    value = json.loads(leaf).get("subject_sealed", "")
    return value if isinstance(value, str) else ""


def _subject(subject: common_pb2.Subject) -> SubjectId:
    return validate_subject(subject)


def _outcome(outcome: int) -> str:
    if outcome == audit_pb2.OUTCOME_UNSPECIFIED:
        return ""
    try:
        return audit_pb2.Outcome.Name(outcome).lower()  # type: ignore[arg-type]
    except ValueError:
        raise invalid_argument(f"outcome: unknown value {outcome}") from None


def _time(request: object, field: str) -> str:
    if not request.HasField(field):  # type: ignore[attr-defined]
        return ""
    stamp: timestamp_pb2.Timestamp = getattr(request, field)
    return format_time(stamp.ToDatetime(dt.UTC))


def _page_token(index: int) -> str:
    return base64.urlsafe_b64encode(str(index).encode()).decode()


def _page_position(token: str) -> int | None:
    if not token:
        return None
    try:
        return int(base64.urlsafe_b64decode(token.encode()).decode())
    except (ValueError, binascii.Error, UnicodeDecodeError):
        raise invalid_argument("page_token: not a token this service issued") from None
