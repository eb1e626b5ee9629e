"""The hub as a server: standard health and reflection, and calm answers to odd requests."""

from __future__ import annotations

import grpc
import grpc.aio
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc
from hub_world import HubWorld, lookup_request, resident

from exchange.v1 import audit_pb2, lookup_pb2

LOOKUP = "/exchange.v1.LookupService/Lookup"


async def test_a_generic_reflection_client_lists_the_services(world: HubWorld) -> None:
    stub = reflection_pb2_grpc.ServerReflectionStub(world.channel(world.mca))

    async def one_request() -> object:
        yield reflection_pb2.ServerReflectionRequest(list_services="")

    services: set[str] = set()
    async for response in stub.ServerReflectionInfo(one_request()):
        services |= {s.name for s in response.list_services_response.service}

    assert {
        "exchange.v1.LookupService",
        "exchange.v1.RegistryService",
        "exchange.v1.AuditService",
        "grpc.health.v1.Health",
    } <= services


async def test_health_reports_each_service_serving_to_any_identity(world: HubWorld) -> None:
    adapter = world.pki.identity("psb-adapter", "adapter", "PSB")
    stub = health_pb2_grpc.HealthStub(world.channel(adapter))
    for service in ("", "exchange.v1.LookupService", "exchange.v1.AuditService"):
        response = await stub.Check(health_pb2.HealthCheckRequest(service=service))
        assert response.status == health_pb2.HealthCheckResponse.SERVING


async def test_health_watch_streams_through_the_gate(world: HubWorld) -> None:
    stub = health_pb2_grpc.HealthStub(world.channel(world.auditor))
    call = stub.Watch(health_pb2.HealthCheckRequest(service="exchange.v1.RegistryService"))
    first = await call.read()
    call.cancel()
    assert first.status == health_pb2.HealthCheckResponse.SERVING


def raw_lookup(world: HubWorld) -> grpc.aio.UnaryUnaryMultiCallable:
    """Lookup taking request bytes as they are, to send what no protobuf library would."""
    return world.channel(world.mca).unary_unary(
        LOOKUP, response_deserializer=lookup_pb2.LookupResponse.FromString
    )


@pytest.mark.parametrize(
    ("payload", "message"),
    [
        (b"", "certificate_type: required"),
        # request_id (field 8) holding bytes that are not UTF-8.
        (b"\x42\x03\xff\xfe\xfd", "request is not a valid message for " + LOOKUP),
        # A truncated message: a length prefix longer than what follows.
        (b"\x0a\x40resident", "request is not a valid message for " + LOOKUP),
        # Refused by its size alone, before it is parsed.
        (
            lookup_request(matter_id="m" * 20_000).SerializeToString(),
            f"request is 20094 bytes, at most 16384 for {LOOKUP}",
        ),
    ],
    ids=["empty", "not-utf8", "truncated", "oversized"],
)
async def test_undecodable_requests_are_invalid_not_internal(
    world: HubWorld, payload: bytes, message: str
) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await raw_lookup(world)(payload)
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert caught.value.details() == message
    entries = await world.audit_entries()
    assert entries[-1].status == "INVALID_ARGUMENT"
    assert entries[-1].outcome == audit_pb2.REFUSED


async def test_a_message_over_grpcs_limit_is_refused_by_grpc_and_the_hub_serves_on(
    world: HubWorld,
) -> None:
    # gRPC refuses it from its length prefix, before the hub (and its audit) could see it.
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await raw_lookup(world)(
            lookup_request(matter_id="m" * (5 * 1024 * 1024)).SerializeToString()
        )
    assert caught.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert "larger than max" in (caught.value.details() or "")

    response = await world.lookup().Lookup(lookup_request())
    assert response.receipt.entry_index == (await world.last_entry(event="lookup")).index


@pytest.mark.parametrize(
    "overrides",
    [
        {"fields": [f"field_{i}" for i in range(100)]},
        {"fields": ["name"] * 65},
        {"fields": ["x" * 10_000]},
        {"request_id": "案件-１７"},
        {"request_id": "line\nbreak"},
        {"subject": resident("１１０１０１１９９００５１７１２３Ｘ"[:18])},
        {"subject": resident("11010119900517123\x00")},
        {"subject": resident("😀" * 18)},
        {"purpose": "\x00"},
        {"certificate_type": "resident_identity\u202e"},
        {"matter_id": "m" * 65},
        {"consent_token": "t" * 4097, "certificate_type": "birth_medical_certificate"},
    ],
    ids=[
        "many-fields",
        "repeated-field",
        "long-field",
        "non-ascii-request-id",
        "control-in-request-id",
        "fullwidth-subject",
        "nul-in-subject",
        "emoji-subject",
        "nul-purpose",
        "bidi-type",
        "long-matter-id",
        "long-consent-token",
    ],
)
async def test_odd_requests_are_refused_as_invalid(
    world: HubWorld, overrides: dict[str, object]
) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await world.lookup().Lookup(lookup_request(**overrides))
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT, caught.value.details()
    entry = await world.last_entry(event="lookup")
    assert entry.status == "INVALID_ARGUMENT"
