"""RegistryService over gRPC: administrators change the catalogue, and every change is audited.

The hub's gate has already checked that the caller is an administrator and set
the caller's identity. Each register or update, applied or refused, becomes one
REGISTRY_CHANGE audit event with the record before and after, durable before the answer
leaves; an applied change is committed in the same transaction as its entry (see `_change`).
Listing is not audited: it changes nothing.
"""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import Callable
from typing import Any, TypeVar

import grpc
import grpc.aio
import sqlalchemy as sa
from google.protobuf.message import Message

from audit.events import AuditEvent, AuditSink, EventKind, Outcome, SubjectId
from exchange.errors import ExchangeError, as_exchange_error, translate_errors
from exchange.identity import current_identity
from exchange.registry.model import (
    CertificateType,
    ConsentIssuer,
    DataSource,
    Delegation,
    Department,
    Grant,
    Record,
    to_json,
)
from exchange.registry.store import RegistryStore
from exchange.registry.validation import checked_subject
from exchange.v1 import registry_pb2, registry_pb2_grpc

R = TypeVar("R", bound=Record)

SERVICE = registry_pb2.DESCRIPTOR.services_by_name["RegistryService"].full_name

# Statuses that mean "the request was wrong", as opposed to the exchange failing.
REFUSALS = frozenset(
    {
        grpc.StatusCode.INVALID_ARGUMENT,
        grpc.StatusCode.ALREADY_EXISTS,
        grpc.StatusCode.NOT_FOUND,
        grpc.StatusCode.PERMISSION_DENIED,
        grpc.StatusCode.UNAUTHENTICATED,
        grpc.StatusCode.FAILED_PRECONDITION,
    }
)


class RegistryServicer(registry_pb2_grpc.RegistryServiceServicer):
    """Serves the registry store to administrators and audits every change."""

    def __init__(self, store: RegistryStore, audit: AuditSink) -> None:
        self._store = store
        self._audit = audit

    async def RegisterDepartment(
        self, request: registry_pb2.Department, context: grpc.aio.ServicerContext
    ) -> registry_pb2.Department:
        """Register a department; ALREADY_EXISTS when its code is taken."""
        async with translate_errors(context):
            department = await self._parse("RegisterDepartment", request, Department.from_proto)
            stored = await self._register(
                "RegisterDepartment", department, RegistryStore.register_department
            )
            return stored.to_proto()

    async def UpdateDepartment(
        self, request: registry_pb2.Department, context: grpc.aio.ServicerContext
    ) -> registry_pb2.Department:
        """Replace a department and its signing keys; NOT_FOUND when it is not registered."""
        async with translate_errors(context):
            department = await self._parse("UpdateDepartment", request, Department.from_proto)
            stored = await self._update(
                "UpdateDepartment", department, RegistryStore.update_department
            )
            return stored.to_proto()

    async def ListDepartments(
        self, request: registry_pb2.ListDepartmentsRequest, context: grpc.aio.ServicerContext
    ) -> registry_pb2.ListDepartmentsResponse:
        """Every department with its signing keys."""
        async with translate_errors(context):
            found = await asyncio.to_thread(self._store.list_departments)
            return registry_pb2.ListDepartmentsResponse(departments=[d.to_proto() for d in found])

    async def RegisterCertificateType(
        self, request: registry_pb2.CertificateType, context: grpc.aio.ServicerContext
    ) -> registry_pb2.CertificateType:
        """Register a certificate type; ALREADY_EXISTS when its code is taken."""
        async with translate_errors(context):
            certificate_type = await self._parse(
                "RegisterCertificateType", request, CertificateType.from_proto
            )
            stored = await self._register(
                "RegisterCertificateType", certificate_type, RegistryStore.register_certificate_type
            )
            return stored.to_proto()

    async def UpdateCertificateType(
        self, request: registry_pb2.CertificateType, context: grpc.aio.ServicerContext
    ) -> registry_pb2.CertificateType:
        """Replace a certificate type; NOT_FOUND when it is not registered."""
        async with translate_errors(context):
            certificate_type = await self._parse(
                "UpdateCertificateType", request, CertificateType.from_proto
            )
            stored = await self._update(
                "UpdateCertificateType", certificate_type, RegistryStore.update_certificate_type
            )
            return stored.to_proto()

    async def ListCertificateTypes(
        self, request: registry_pb2.ListCertificateTypesRequest, context: grpc.aio.ServicerContext
    ) -> registry_pb2.ListCertificateTypesResponse:
        """Every certificate type."""
        async with translate_errors(context):
            found = await asyncio.to_thread(self._store.list_certificate_types)
            return registry_pb2.ListCertificateTypesResponse(
                certificate_types=[t.to_proto() for t in found]
            )

    async def RegisterDataSource(
        self, request: registry_pb2.DataSource, context: grpc.aio.ServicerContext
    ) -> registry_pb2.DataSource:
        """Register a data source; ALREADY_EXISTS when its id is taken."""
        async with translate_errors(context):
            data_source = await self._parse("RegisterDataSource", request, DataSource.from_proto)
            stored = await self._register(
                "RegisterDataSource", data_source, RegistryStore.register_data_source
            )
            return stored.to_proto()

    async def UpdateDataSource(
        self, request: registry_pb2.DataSource, context: grpc.aio.ServicerContext
    ) -> registry_pb2.DataSource:
        """Replace a data source; NOT_FOUND when it is not registered."""
        async with translate_errors(context):
            data_source = await self._parse("UpdateDataSource", request, DataSource.from_proto)
            stored = await self._update(
                "UpdateDataSource", data_source, RegistryStore.update_data_source
            )
            return stored.to_proto()

    async def ListDataSources(
        self, request: registry_pb2.ListDataSourcesRequest, context: grpc.aio.ServicerContext
    ) -> registry_pb2.ListDataSourcesResponse:
        """Every data source, enabled or not."""
        async with translate_errors(context):
            found = await asyncio.to_thread(self._store.list_data_sources)
            return registry_pb2.ListDataSourcesResponse(data_sources=[s.to_proto() for s in found])

    async def RegisterGrant(
        self, request: registry_pb2.Grant, context: grpc.aio.ServicerContext
    ) -> registry_pb2.Grant:
        """Register a grant (id assigned when empty); ALREADY_EXISTS when its id is taken."""
        async with translate_errors(context):
            grant = await self._parse("RegisterGrant", request, Grant.from_proto)
            stored = await self._register("RegisterGrant", grant, RegistryStore.register_grant)
            return stored.to_proto()

    async def UpdateGrant(
        self, request: registry_pb2.Grant, context: grpc.aio.ServicerContext
    ) -> registry_pb2.Grant:
        """Replace a grant; NOT_FOUND when it is not registered."""
        async with translate_errors(context):
            grant = await self._parse("UpdateGrant", request, Grant.from_proto)
            stored = await self._update("UpdateGrant", grant, RegistryStore.update_grant)
            return stored.to_proto()

    async def ListGrants(
        self, request: registry_pb2.ListGrantsRequest, context: grpc.aio.ServicerContext
    ) -> registry_pb2.ListGrantsResponse:
        """Every grant, or those to one requesting department."""
        async with translate_errors(context):
            found = await asyncio.to_thread(self._store.list_grants, request.requesting_department)
            return registry_pb2.ListGrantsResponse(grants=[g.to_proto() for g in found])

    async def RegisterConsentIssuer(
        self, request: registry_pb2.ConsentIssuer, context: grpc.aio.ServicerContext
    ) -> registry_pb2.ConsentIssuer:
        """Register a consent issuer and its keys; ALREADY_EXISTS when its id is taken."""
        async with translate_errors(context):
            issuer = await self._parse("RegisterConsentIssuer", request, ConsentIssuer.from_proto)
            stored = await self._register(
                "RegisterConsentIssuer", issuer, RegistryStore.register_consent_issuer
            )
            return stored.to_proto()

    async def UpdateConsentIssuer(
        self, request: registry_pb2.ConsentIssuer, context: grpc.aio.ServicerContext
    ) -> registry_pb2.ConsentIssuer:
        """Replace a consent issuer and its keys; NOT_FOUND when it is not registered."""
        async with translate_errors(context):
            issuer = await self._parse("UpdateConsentIssuer", request, ConsentIssuer.from_proto)
            stored = await self._update(
                "UpdateConsentIssuer", issuer, RegistryStore.update_consent_issuer
            )
            return stored.to_proto()

    async def ListConsentIssuers(
        self, request: registry_pb2.ListConsentIssuersRequest, context: grpc.aio.ServicerContext
    ) -> registry_pb2.ListConsentIssuersResponse:
        """Every consent issuer with its keys."""
        async with translate_errors(context):
            found = await asyncio.to_thread(self._store.list_consent_issuers)
            return registry_pb2.ListConsentIssuersResponse(
                consent_issuers=[i.to_proto() for i in found]
            )

    async def RegisterDelegation(
        self, request: registry_pb2.Delegation, context: grpc.aio.ServicerContext
    ) -> registry_pb2.Delegation:
        """Register a delegation (id assigned when empty); ALREADY_EXISTS when its id is taken."""
        async with translate_errors(context):
            delegation = await self._parse("RegisterDelegation", request, Delegation.from_proto)
            stored = await self._register(
                "RegisterDelegation", delegation, RegistryStore.register_delegation
            )
            return stored.to_proto()

    async def UpdateDelegation(
        self, request: registry_pb2.Delegation, context: grpc.aio.ServicerContext
    ) -> registry_pb2.Delegation:
        """Replace a delegation (e.g. revoke it); NOT_FOUND when it is not registered."""
        async with translate_errors(context):
            delegation = await self._parse("UpdateDelegation", request, Delegation.from_proto)
            stored = await self._update(
                "UpdateDelegation", delegation, RegistryStore.update_delegation
            )
            return stored.to_proto()

    async def ListDelegations(
        self, request: registry_pb2.ListDelegationsRequest, context: grpc.aio.ServicerContext
    ) -> registry_pb2.ListDelegationsResponse:
        """Every delegation, revoked ones included."""
        async with translate_errors(context):
            found = await asyncio.to_thread(self._store.list_delegations)
            return registry_pb2.ListDelegationsResponse(delegations=[d.to_proto() for d in found])

    async def _register(
        self, method: str, record: R, register: Callable[[RegistryStore, R], R]
    ) -> R:
        return await self._change(method, record, lambda store: (None, register(store, record)))

    async def _update(
        self, method: str, record: R, update: Callable[[RegistryStore, R], tuple[R, R]]
    ) -> R:
        return await self._change(method, record, lambda store: update(store, record))

    async def _parse(self, method: str, request: Message, parse: Callable[[Any], R]) -> R:
        """The record a request carries; one that is not a record is refused, and audited."""
        try:
            return parse(request)
        except ExchangeError as error:
            await self._audit.append(
                dataclasses.replace(
                    _event(method),
                    outcome=Outcome.REFUSED,
                    status=error.status.name,
                    # Not the request itself: a delegation's would carry resident ids in clear.
                    reason=error.message,
                )
            )
            raise

    async def _change(
        self,
        method: str,
        attempted: R,
        apply: Callable[[RegistryStore], tuple[R | None, R]],
    ) -> R:
        """Apply a change in the transaction that audits it, and return the stored record.

        The audit log runs `change` in its writer thread, in the transaction that then stores
        the entry: an administrator's change is never in force without its entry, nor its
        entry on record without the change.
        """
        # A delegation is about its principal: the change shows in their access report.
        event = dataclasses.replace(_event(method), subject=_principal_of(attempted))
        applied: list[R] = []
        refusal: list[Exception] = []

        def change(conn: sa.Connection) -> AuditEvent:
            try:
                before, after = apply(self._store.within(conn))
            except Exception as exc:
                refusal.append(exc)
                raise
            applied.append(after)
            return dataclasses.replace(
                event,
                change_before="" if before is None else to_json(before),
                change_after=to_json(after),
            )

        try:
            await self._audit.append_change(change)
        except Exception as exc:
            # The store's own refusal (or failure), if it came to that; else the log's.
            error = as_exchange_error(refusal[0] if refusal else exc)
            if refusal:
                # Nothing was stored: the attempt is recorded on its own, so auditors see
                # what was tried.
                await self._audit.append(
                    dataclasses.replace(
                        event,
                        outcome=Outcome.REFUSED if error.status in REFUSALS else Outcome.FAILED,
                        status=error.status.name,
                        reason=error.message,
                        change_after=to_json(attempted),
                    )
                )
            raise error from exc
        return applied[0]


def _event(method: str) -> AuditEvent:
    """A registry change by the caller, as applied; callers replace what went otherwise."""
    identity = current_identity()
    return AuditEvent(
        event=EventKind.REGISTRY_CHANGE,
        outcome=Outcome.GRANTED,
        status=grpc.StatusCode.OK.name,
        method=f"/{SERVICE}/{method}",
        caller=identity.name,
        requester_department=identity.department,
        role=str(identity.role),
    )


def _principal_of(record: Record) -> SubjectId | None:
    """For a delegation, its principal as the audit log files it (normalised); else None."""
    if not isinstance(record, Delegation):
        return None
    try:
        return checked_subject("delegation.principal", record.principal)
    except ExchangeError:
        return None  # a malformed id is refused; the attempt is still audited, without it
