"""GatedServer: whichever way a service is registered, no call reaches it past the gate."""

from __future__ import annotations

from typing import Any

import grpc
import grpc.aio
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from exchange.gated_server import GatedServer

SERVICE = "grpc.health.v1.Health"


class RefusingGate:
    """Refuses every call of the methods it wraps; records what it was given."""

    def __init__(self) -> None:
        self.wrapped: list[str] = []

    def __call__(self, method: str, handler: grpc.RpcMethodHandler) -> grpc.RpcMethodHandler:
        self.wrapped.append(method)

        async def refuse(request: Any, context: grpc.aio.ServicerContext) -> Any:
            await context.abort(grpc.StatusCode.PERMISSION_DENIED, f"gate refused {method}")

        return handler._replace(unary_unary=refuse)


@pytest.mark.parametrize("registration", ["generic", "registered", "servicer"])
async def test_every_way_of_registering_a_service_goes_through_the_gate(
    registration: str,
) -> None:
    reached: list[str] = []

    async def check(request: Any, context: Any) -> health_pb2.HealthCheckResponse:
        reached.append(request.service)
        return health_pb2.HealthCheckResponse(status=health_pb2.HealthCheckResponse.SERVING)

    handlers = {
        "Check": grpc.unary_unary_rpc_method_handler(
            check,
            request_deserializer=health_pb2.HealthCheckRequest.FromString,
            response_serializer=health_pb2.HealthCheckResponse.SerializeToString,
        )
    }
    gate = RefusingGate()
    server = GatedServer(grpc.aio.server(), gate)
    if registration == "generic":
        server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(SERVICE, handlers),))
    elif registration == "registered":
        server.add_registered_method_handlers(SERVICE, handlers)
    else:  # the generated function, as the hub and the nodes register their services

        class Health(health_pb2_grpc.HealthServicer):  # type: ignore[misc]
            Check = staticmethod(check)

        health_pb2_grpc.add_HealthServicer_to_server(Health(), server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            with pytest.raises(grpc.aio.AioRpcError) as refused:
                await health_pb2_grpc.HealthStub(channel).Check(
                    health_pb2.HealthCheckRequest(service="x"), timeout=5
                )
    finally:
        await server.stop(None)
    assert refused.value.code() == grpc.StatusCode.PERMISSION_DENIED
    assert refused.value.details() == f"gate refused /{SERVICE}/Check"
    assert reached == []  # the handler never ran
    assert f"/{SERVICE}/Check" in gate.wrapped
