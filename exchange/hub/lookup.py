"""LookupService: one certificate about one subject, fetched from its issuer, verified, audited.

The flow (DESIGN.md, "The core flow"): check the request's shape, admit it within the
department's quota (exchange/quota.py), apply the catalogue, the caller's grants, delegation
and consent (policy.py), spend a single-use consent, fetch from the type's data sources
(routing.py), verify what came back (verify.py). Every step only raises; `Lookup` is the one
boundary that catches, turns the result into an outcome, and hands it to `_answer`, which
audits it (through `_record`, the one place a lookup is written to the log) and then answers:
with the document and receipt, or with the error status, the receipt (and, over quota, when
to retry) in the trailing metadata. No answer leaves before its entry is durable.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import grpc

from audit.events import AuditEvent, AuditSink, EventKind, SubjectId
from exchange.consent_uses import ConsentUses
from exchange.errors import ExchangeError, as_exchange_error
from exchange.hub.gate import CALL_SNAPSHOT, Catalogue
from exchange.hub.outcomes import failure_metadata, outcome_of
from exchange.hub.policy import (
    MAX_CODE,
    MAX_REQUEST_ID,
    MAX_TEXT,
    CheckedRequest,
    certificate_type_for,
    check_request,
    decide,
    request_id_of,
)
from exchange.hub.routing import Router
from exchange.hub.verify import (
    Expected,
    IntegrityError,
    payload_digest,
    released_copy,
    verify_document,
)
from exchange.identity import current_identity
from exchange.quota import Quotas
from exchange.registry.model import UNLIMITED
from exchange.registry.snapshot import RegistrySnapshot
from exchange.v1 import adapter_pb2, common_pb2, lookup_pb2, lookup_pb2_grpc

log = logging.getLogger(__name__)

METHOD = "/exchange.v1.LookupService/Lookup"


@dataclass
class _Trail:
    """What is known about one lookup so far; becomes its audit entry."""

    request: lookup_pb2.LookupRequest
    started: float
    request_id: str
    caller: str
    department: str
    role: str
    subject: SubjectId | None = None
    issuer: str = ""
    grant_id: str = ""
    consent_ref: str = ""  # the consent_id of a verified consent

    def event(
        self,
        status: grpc.StatusCode,
        reason: str = "",
        fields_released: tuple[str, ...] = (),
        document_digest: str = "",
    ) -> AuditEvent:
        """The audit event for this lookup ending with `status`."""
        request = self.request
        return AuditEvent(
            event=EventKind.LOOKUP,
            outcome=outcome_of(status),
            status=status.name,
            method=METHOD,
            caller=self.caller,
            requester_department=self.department,
            role=self.role,
            operator_id=request.operator_id[:MAX_TEXT],
            subject=self.subject,
            certificate_type=request.certificate_type[:MAX_CODE],
            issuer=self.issuer,
            purpose=request.purpose[:MAX_CODE],
            matter_id=request.matter_id[:MAX_TEXT],
            grant_id=self.grant_id,
            consent_ref=self.consent_ref,
            delegation_id=request.delegation_id[:MAX_TEXT],
            reason=reason,
            request_id=self.request_id,
            latency_us=int((time.monotonic() - self.started) * 1_000_000),
            fields_released=fields_released,
            document_digest=document_digest,
        )


@dataclass(frozen=True)
class _Outcome:
    """How a lookup ended: the audit event, and the document or the error to answer with."""

    event: AuditEvent
    document: common_pb2.SignedDocument | None = None
    error: ExchangeError | None = None
    request_id: str = ""


class LookupServicer(lookup_pb2_grpc.LookupServiceServicer):
    """Implements exchange.v1.LookupService over the registry, the audit log and a Router."""

    def __init__(
        self,
        catalogue: Catalogue,
        audit: AuditSink,
        router: Router,
        default_deadline_seconds: float = 30.0,
        *,
        consent_uses: ConsentUses,
        quotas: Quotas | None = None,
    ) -> None:
        self._catalogue = catalogue
        self._audit = audit
        self._router = router
        self._default_deadline = default_deadline_seconds
        self._consent_uses = consent_uses
        self._quotas = quotas or Quotas()

    async def Lookup(
        self, request: lookup_pb2.LookupRequest, context: Any
    ) -> lookup_pb2.LookupResponse:
        """Release one signed document about one subject, or say why not; always audited."""
        with self._audit.under_way():  # lets the audit log's group commit wait for this one
            return await self._lookup(request, context)

    async def _lookup(
        self, request: lookup_pb2.LookupRequest, context: Any
    ) -> lookup_pb2.LookupResponse:
        identity = current_identity()
        trail = _Trail(
            request=request,
            started=time.monotonic(),
            request_id=request.request_id[:MAX_REQUEST_ID],
            caller=identity.name,
            department=identity.department,
            role=identity.role.value,
        )
        try:
            outcome = await self._release(request, trail, self._deadline(context))
        except asyncio.CancelledError:
            # The caller went away (or its deadline passed); the attempt stays on record.
            cancelled = trail.event(grpc.StatusCode.CANCELLED, "the call was cancelled")
            with contextlib.suppress(Exception):
                await asyncio.shield(self._record(cancelled))
            raise
        except Exception as exc:  # the one boundary: audit, then answer
            error = as_exchange_error(exc)
            reason = f"integrity: {error.message}" if isinstance(exc, IntegrityError) else ""
            outcome = _Outcome(
                event=trail.event(error.status, reason or error.message),
                error=error,
                request_id=trail.request_id,
            )
        return await self._answer(context, outcome)

    async def _release(
        self, request: lookup_pb2.LookupRequest, trail: _Trail, deadline: float
    ) -> _Outcome:
        trail.request_id = request_id_of(request)
        checked = check_request(request, trail.request_id)
        trail.subject = checked.subject
        snapshot = CALL_SNAPSHOT.get() or await self._catalogue.snapshot()
        department = snapshot.department(trail.department)
        quota = department.quota if department is not None else UNLIMITED
        with self._quotas.admit(trail.department, quota):
            return await self._within_quota(snapshot, checked, trail, deadline)

    async def _within_quota(
        self, snapshot: RegistrySnapshot, checked: CheckedRequest, trail: _Trail, deadline: float
    ) -> _Outcome:
        certificate_type = certificate_type_for(snapshot, checked)
        trail.issuer = certificate_type.issuing_department
        now = datetime.now(UTC)
        release = decide(snapshot, certificate_type, checked, trail.department, now)
        trail.grant_id = release.grant.id
        if release.consent is not None:
            trail.consent_ref = release.consent.consent_id
            await self._consent_uses.spend(release.consent, now)
        subject = common_pb2.Subject(
            kind=common_pb2.SubjectKind.Value(checked.subject.kind), id=checked.subject.id
        )
        signed = await self._router.fetch(
            snapshot.data_sources_for(certificate_type.code),
            adapter_pb2.FetchRequest(
                certificate_type=certificate_type.code,
                subject=subject,
                fields=release.fields,
                request_id=checked.request_id,
                requester_department=trail.department,
                purpose=checked.purpose,
            ),
            deadline,
        )
        expected = Expected(
            certificate_type=certificate_type.code,
            subject=checked.subject,
            issuer=certificate_type.issuing_department,
            request_id=checked.request_id,
            fields=release.fields,
        )
        document = verify_document(signed, expected, snapshot)
        released = tuple(name for name in release.fields if name in document.fields)
        event = trail.event(
            grpc.StatusCode.OK,
            fields_released=released,
            document_digest=payload_digest(signed),
        )
        return _Outcome(event=event, document=released_copy(signed), request_id=checked.request_id)

    async def _record(self, event: AuditEvent) -> lookup_pb2.Receipt:
        """The one place a lookup is audited: returns once the entry is durable."""
        return await self._audit.append(event)

    async def _answer(self, context: Any, outcome: _Outcome) -> lookup_pb2.LookupResponse:
        """Audit the outcome, then answer; nothing is released if the audit entry is not durable."""
        try:
            receipt = await self._record(outcome.event)
        except Exception as exc:  # unaudited means unanswered
            error = as_exchange_error(exc)
            log.error("lookup %s not audited; answering %s", outcome.request_id, error.status.name)
            await context.abort(error.status, error.message)
        if outcome.error is None:
            return lookup_pb2.LookupResponse(document=outcome.document, receipt=receipt)
        await context.abort(
            outcome.error.status,
            outcome.error.message,
            (*failure_metadata(receipt, outcome.request_id), *outcome.error.metadata),
        )
        raise AssertionError("unreachable: context.abort raises")

    def _deadline(self, context: Any) -> float:
        """The monotonic instant this lookup must finish fetching by.

        The caller's deadline less a margin to audit and answer in (so the caller hears why,
        and the log says so), or the default when the caller set none.
        """
        budget = self._default_deadline
        remaining = context.time_remaining()
        if remaining is not None:
            budget = min(budget, remaining - min(0.5, remaining / 10))
        return time.monotonic() + budget
