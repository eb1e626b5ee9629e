"""RegistryService over a real grpc.aio server with mutual TLS: answers, refusals and audit.

The hub's gate interceptor is not part of this unit; a minimal interceptor here sets the
caller's identity from the client certificate as the gate does. The audit sink records events
in a list, because the real audit log is tested in tests/audit.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import grpc.aio
import pytest
import sqlalchemy as sa
from pki_fixture import TestPki
from registry.registry_catalogue import (
    allowance_grant,
    civil_affairs,
    psb,
    psb_source,
    resident_identity,
)

from audit.events import AuditEvent, EventKind, Outcome
from exchange.db import make_engine, upgrade
from exchange.identity import CURRENT_IDENTITY, identity_from_context
from exchange.pki import key_id_for
from exchange.registry import RegistryStore, to_json
from exchange.registry.model import DataSource, Department, Grant
from exchange.registry.service import RegistryServicer
from exchange.tls import channel_credentials, server_credentials
from exchange.v1 import lookup_pb2, registry_pb2, registry_pb2_grpc

METHOD = "/exchange.v1.RegistryService/"


@dataclass
class RecordingAudit:
    """An AuditSink that keeps events in memory; changes go to `engine` in a transaction
    of their own."""

    engine: sa.Engine
    events: list[AuditEvent] = field(default_factory=list)

    async def append(self, event: AuditEvent) -> lookup_pb2.Receipt:
        self.events.append(event)
        return lookup_pb2.Receipt(entry_index=len(self.events) - 1)

    async def append_change(
        self, change: Callable[[sa.Connection], AuditEvent]
    ) -> lookup_pb2.Receipt:
        with self.engine.begin() as conn:
            event = change(conn)
        return await self.append(event)

    def under_way(self) -> contextlib.nullcontext[None]:
        return contextlib.nullcontext()


class IdentityFromCertificate(grpc.aio.ServerInterceptor):  # type: ignore[misc]
    """Sets CURRENT_IDENTITY from the client certificate before the handler runs."""

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        handler = await continuation(details)
        inner = handler.unary_unary

        async def with_identity(request: Any, context: grpc.aio.ServicerContext) -> Any:
            CURRENT_IDENTITY.set(identity_from_context(context))
            return await inner(request, context)

        return grpc.unary_unary_rpc_method_handler(
            with_identity,
            request_deserializer=handler.request_deserializer,
            response_serializer=handler.response_serializer,
        )


@dataclass
class Registry:
    stub: registry_pb2_grpc.RegistryServiceStub
    audit: RecordingAudit


@pytest.fixture
async def registry(pki: TestPki, tmp_path: Path) -> AsyncIterator[Registry]:
    engine = make_engine(f"sqlite:///{tmp_path / 'exchange.db'}")
    upgrade(engine)
    audit = RecordingAudit(engine)
    server = grpc.aio.server(interceptors=[IdentityFromCertificate()])
    registry_pb2_grpc.add_RegistryServiceServicer_to_server(
        RegistryServicer(RegistryStore(engine), audit), server
    )
    port = server.add_secure_port(
        "127.0.0.1:0", server_credentials(pki.identity("hub", "hub", "EXCHANGE"))
    )
    await server.start()
    admin = channel_credentials(pki.identity("registry-admin", "admin", "EXCHANGE"))
    async with grpc.aio.secure_channel(f"127.0.0.1:{port}", admin) as channel:
        yield Registry(registry_pb2_grpc.RegistryServiceStub(channel), audit)
    await server.stop(None)
    engine.dispose()


async def seed(stub: registry_pb2_grpc.RegistryServiceStub) -> registry_pb2.Grant:
    await stub.RegisterDepartment(psb().to_proto())
    await stub.RegisterDepartment(civil_affairs().to_proto())
    await stub.RegisterCertificateType(resident_identity().to_proto())
    await stub.RegisterDataSource(psb_source().to_proto())
    grant: registry_pb2.Grant = await stub.RegisterGrant(allowance_grant().to_proto())
    return grant


async def test_admin_builds_the_catalogue_and_each_change_is_audited(registry: Registry) -> None:
    department = psb()
    stored = await registry.stub.RegisterDepartment(department.to_proto())
    assert stored.signing_keys[0].key_id == key_id_for(department.signing_keys[0].public_key)
    await registry.stub.RegisterDepartment(civil_affairs().to_proto())
    await registry.stub.RegisterCertificateType(resident_identity().to_proto())
    await registry.stub.RegisterDataSource(psb_source().to_proto())
    grant = await registry.stub.RegisterGrant(allowance_grant().to_proto())
    assert grant.id.startswith("g-")

    departments = await registry.stub.ListDepartments(registry_pb2.ListDepartmentsRequest())
    types = await registry.stub.ListCertificateTypes(registry_pb2.ListCertificateTypesRequest())
    sources = await registry.stub.ListDataSources(registry_pb2.ListDataSourcesRequest())
    grants = await registry.stub.ListGrants(registry_pb2.ListGrantsRequest())
    assert [d.code for d in departments.departments] == ["MZJ", "PSB"]
    assert [t.code for t in types.certificate_types] == ["resident_identity"]
    assert list(sources.data_sources) == [psb_source().to_proto()]
    assert list(grants.grants) == [grant]

    events = registry.audit.events
    assert [e.method for e in events] == [
        METHOD + "RegisterDepartment",
        METHOD + "RegisterDepartment",
        METHOD + "RegisterCertificateType",
        METHOD + "RegisterDataSource",
        METHOD + "RegisterGrant",
    ]
    for event in events:
        assert event.event == EventKind.REGISTRY_CHANGE
        assert (event.outcome, event.status) == (Outcome.GRANTED, "OK")
        assert (event.caller, event.requester_department, event.role) == (
            "registry-admin",
            "EXCHANGE",
            "admin",
        )
        assert event.change_before == ""
    assert events[0].change_after == to_json(Department.from_proto(stored))
    assert events[-1].change_after == to_json(Grant.from_proto(grant))


async def test_update_is_audited_with_before_and_after(registry: Registry) -> None:
    grant = await seed(registry.stub)
    narrowed = registry_pb2.Grant()
    narrowed.CopyFrom(grant)
    del narrowed.fields[1:]

    answer = await registry.stub.UpdateGrant(narrowed)
    source = psb_source().to_proto()
    source.enabled = False
    await registry.stub.UpdateDataSource(source)

    assert list(answer.fields) == ["name"]
    grant_event, source_event = registry.audit.events[-2:]
    assert grant_event.method == METHOD + "UpdateGrant"
    assert json.loads(grant_event.change_before)["fields"] == ["name", "birth_date"]
    assert json.loads(grant_event.change_after)["fields"] == ["name"]
    assert json.loads(source_event.change_before)["enabled"] is True
    assert json.loads(source_event.change_after)["enabled"] is False
    assert source_event.change_after == to_json(DataSource.from_proto(source))


async def test_refused_change_reaches_the_caller_and_the_audit_log(registry: Registry) -> None:
    await seed(registry.stub)
    greedy = allowance_grant().to_proto()
    greedy.fields.append("eye_colour")

    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await registry.stub.RegisterGrant(greedy)

    message = "grant.fields: 'eye_colour' is not a field of certificate type 'resident_identity'"
    assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert refused.value.details() == message
    event = registry.audit.events[-1]
    assert (event.method, event.outcome, event.status) == (
        METHOD + "RegisterGrant",
        Outcome.REFUSED,
        "INVALID_ARGUMENT",
    )
    assert event.reason == message
    assert "eye_colour" in json.loads(event.change_after)["fields"]
    grants = await registry.stub.ListGrants(registry_pb2.ListGrantsRequest())
    assert len(grants.grants) == 1


async def test_updating_what_is_not_registered_is_not_found_and_audited(
    registry: Registry,
) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await registry.stub.UpdateCertificateType(resident_identity().to_proto())

    assert refused.value.code() == grpc.StatusCode.NOT_FOUND
    assert refused.value.details() == "certificate type 'resident_identity' is not registered"
    event = registry.audit.events[-1]
    assert (event.outcome, event.status) == (Outcome.REFUSED, "NOT_FOUND")
    assert event.change_after == to_json(resident_identity())


async def test_a_request_that_is_no_record_is_invalid_and_audited(registry: Registry) -> None:
    await seed(registry.stub)
    absurd = allowance_grant().to_proto()
    absurd.valid_until.seconds = 2**62

    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await registry.stub.RegisterGrant(absurd)

    assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert refused.value.details() == "valid_until: timestamp out of range"
    event = registry.audit.events[-1]
    assert (event.method, event.outcome, event.reason) == (
        METHOD + "RegisterGrant",
        Outcome.REFUSED,
        "valid_until: timestamp out of range",
    )


async def test_grants_are_listed_per_requesting_department(registry: Registry) -> None:
    grant = await seed(registry.stub)

    mzj = await registry.stub.ListGrants(
        registry_pb2.ListGrantsRequest(requesting_department="MZJ")
    )
    psb_grants = await registry.stub.ListGrants(
        registry_pb2.ListGrantsRequest(requesting_department="PSB")
    )

    assert list(mzj.grants) == [grant]
    assert list(psb_grants.grants) == []
    # Listing changes nothing, so it is not audited: five registrations, five events.
    assert len(registry.audit.events) == 5
