"""Who may call what: the TLS handshake keeps strangers out, the gate checks role and department.

Every refusal the hub itself makes is in the audit log, with the caller and the reason, and the
caller gets its receipt in the trailing metadata.
"""

from __future__ import annotations

import grpc
import grpc.aio
import pytest
from hub_world import HubWorld, lookup_request

from exchange.v1 import (
    audit_pb2,
    audit_pb2_grpc,
    lookup_pb2,
    lookup_pb2_grpc,
    registry_pb2,
    registry_pb2_grpc,
)

LOOKUP = "/exchange.v1.LookupService/Lookup"


async def refused(call: object) -> grpc.aio.AioRpcError:
    """The error a call (an awaitable) ends with."""
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await call  # type: ignore[misc]
    return caught.value


def receipt_of(error: grpc.aio.AioRpcError) -> lookup_pb2.Receipt:
    """The audit receipt a refused call carries in its trailing metadata."""
    metadata = dict(error.trailing_metadata() or ())
    return lookup_pb2.Receipt.FromString(metadata["exchange-receipt-bin"])


async def test_a_caller_without_a_client_certificate_fails_the_handshake(
    world: HubWorld,
) -> None:
    credentials = grpc.ssl_channel_credentials(root_certificates=world.mca.ca.read_bytes())
    async with grpc.aio.secure_channel(world.endpoint, credentials) as channel:
        stub = lookup_pb2_grpc.LookupServiceStub(channel)
        error = await refused(stub.Lookup(lookup_request(), timeout=10))
    assert error.code() == grpc.StatusCode.UNAVAILABLE


@pytest.mark.parametrize("kind", ["foreign", "expired"])
async def test_a_certificate_our_ca_does_not_vouch_for_fails_the_handshake(
    world: HubWorld, kind: str
) -> None:
    issue = world.pki.foreign_identity if kind == "foreign" else world.pki.expired_identity
    stranger = issue("mca-case-system", "department", "MCA")
    error = await refused(world.lookup(stranger).Lookup(lookup_request(), timeout=10))
    assert error.code() == grpc.StatusCode.UNAVAILABLE
    # The hub never saw an identity: nothing was looked up on the stranger's behalf.
    assert await world.audit_entries(event="lookup") == []


@pytest.mark.parametrize(
    ("role", "department"),
    [("adapter", "PSB"), ("admin", "EXCHANGE"), ("auditor", "EXCHANGE"), ("hub", "EXCHANGE")],
)
async def test_only_departments_may_look_up(world: HubWorld, role: str, department: str) -> None:
    caller = world.pki.identity(f"some-{role}", role, department)
    error = await refused(world.lookup(caller).Lookup(lookup_request()))

    assert error.code() == grpc.StatusCode.PERMISSION_DENIED
    assert error.details() == f"role {role!r} may not call {LOOKUP}"
    entry = await world.last_entry(event="call_refused")
    assert (entry.caller, entry.role, entry.method) == (f"some-{role}", role, LOOKUP)
    assert entry.outcome == audit_pb2.REFUSED
    assert entry.status == "PERMISSION_DENIED"
    assert entry.index == receipt_of(error).entry_index


async def test_a_department_the_registry_does_not_know_is_unauthenticated(
    world: HubWorld,
) -> None:
    ghost = world.pki.identity("ghost-office", "department", "GHOST")
    error = await refused(world.lookup(ghost).Lookup(lookup_request()))

    assert error.code() == grpc.StatusCode.UNAUTHENTICATED
    assert error.details() == "department 'GHOST' is not registered"
    entry = await world.last_entry(event="call_refused")
    assert (entry.caller, entry.requester_department) == ("ghost-office", "GHOST")
    assert entry.status == "UNAUTHENTICATED"
    assert entry.reason == "department 'GHOST' is not registered"


async def test_a_department_may_not_change_the_registry_or_read_the_log(
    world: HubWorld,
) -> None:
    registry = registry_pb2_grpc.RegistryServiceStub(world.channel(world.mca))
    audit = audit_pb2_grpc.AuditServiceStub(world.channel(world.mca))

    grant = registry_pb2.Grant(
        requesting_department="MCA",
        certificate_type="criminal_record",
        fields=["convictions"],
        purposes=["curiosity"],
    )
    change = await refused(registry.RegisterGrant(grant))
    query = await refused(audit.QueryAccessLog(audit_pb2.QueryAccessLogRequest()))
    listing = await refused(registry.ListGrants(registry_pb2.ListGrantsRequest()))

    for error in (change, query, listing):
        assert error.code() == grpc.StatusCode.PERMISSION_DENIED
    refusals = await world.audit_entries(event="call_refused", requester_department="MCA")
    assert [e.method for e in refusals] == [
        "/exchange.v1.RegistryService/RegisterGrant",
        "/exchange.v1.AuditService/QueryAccessLog",
        "/exchange.v1.RegistryService/ListGrants",
    ]
    # The grant was not registered.
    grants = await world.registry().ListGrants(registry_pb2.ListGrantsRequest())
    assert "curiosity" not in {p for g in grants.grants for p in g.purposes}


async def test_the_admin_and_the_auditor_reach_their_own_services(world: HubWorld) -> None:
    departments = await world.registry().ListDepartments(registry_pb2.ListDepartmentsRequest())
    assert "MCA" in {d.code for d in departments.departments}
    entries = await world.audit_entries()
    assert entries, "registering the catalogue was audited"


async def test_an_auditor_may_not_change_the_registry(world: HubWorld) -> None:
    registry = world.registry(world.auditor)
    error = await refused(
        registry.RegisterDepartment(registry_pb2.Department(code="EVIL", name="Evil"))
    )
    assert error.code() == grpc.StatusCode.PERMISSION_DENIED
    departments = await world.registry().ListDepartments(registry_pb2.ListDepartmentsRequest())
    assert "EVIL" not in {d.code for d in departments.departments}


async def test_a_certificate_with_a_role_the_exchange_does_not_know_is_unauthenticated(
    world: HubWorld,
) -> None:
    janitor = world.pki.identity("night-janitor", "janitor", "MCA")
    error = await refused(world.lookup(janitor).Lookup(lookup_request()))

    assert error.code() == grpc.StatusCode.UNAUTHENTICATED
    assert error.details() == "client certificate has unknown role 'janitor'"
    entry = await world.last_entry(event="call_refused")
    assert (entry.status, entry.reason) == ("UNAUTHENTICATED", error.details())


async def test_streaming_calls_pass_the_same_gate(world: HubWorld) -> None:
    await world.audit().GetCheckpoint(audit_pb2.GetCheckpointRequest(fresh=True))

    records = [r async for r in world.audit().ExportLog(audit_pb2.ExportLogRequest())]
    assert records[-1].HasField("checkpoint")
    assert any(r.entry.event == "registry_change" for r in records[:-1])

    as_department = audit_pb2_grpc.AuditServiceStub(world.channel(world.mca))
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        [r async for r in as_department.ExportLog(audit_pb2.ExportLogRequest())]
    assert caught.value.code() == grpc.StatusCode.PERMISSION_DENIED
    entry = await world.last_entry(event="call_refused")
    assert entry.method == "/exchange.v1.AuditService/ExportLog"
