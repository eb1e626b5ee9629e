"""The adapter node's gate: only the hub may call AdapterService, with a certificate in force.

Departments reach records only through the hub, which applies grants, consent and audit;
a department certificate calling an adapter node directly would bypass all of that. The TLS
handshake has already verified the certificate against the CA; this gate checks on
every call that it is not revoked (the CA's CRL, re-read when it changes) nor expired, and
reads its role, before any AdapterService handler runs. Health checks and reflection stay
open to any verified peer, so load balancers and operators can probe the node.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from typing import Any

import grpc
import grpc.aio

from exchange.errors import ExchangeError, permission_denied, translate_errors
from exchange.identity import Identity, Role, identity_from_context
from exchange.revocation import RevocationList, check_certificate

log = logging.getLogger(__name__)

GUARDED_PREFIX = "/exchange.v1.AdapterService/"
HUB_ONLY_MESSAGE = "only the hub may call an adapter node"


class HubOnlyGate:
    """Refuses AdapterService calls whose client certificate is revoked, expired or not a hub's.

    Applied to every method handler when its service is registered (exchange/gated_server.py).
    """

    def __init__(self, revocations: RevocationList | None = None) -> None:
        self._revocations = revocations

    def __call__(self, method: str, handler: Any) -> Any:
        """`handler` (serving `method`), wrapped with the role check if it is an adapter method."""
        if not method.startswith(GUARDED_PREFIX):
            return handler
        return self._guard(method, handler)

    def _guard(self, method: str, handler: Any) -> Any:
        if handler.unary_unary is not None:
            return self._guard_unary(method, handler)
        if handler.stream_stream is not None:
            return self._guard_stream(method, handler)
        raise TypeError(f"{method}: the hub-only gate handles unary and bidi-stream methods")

    def _admit(self, method: str, context: grpc.aio.ServicerContext) -> Identity:
        identity = identity_from_context(context)
        self._check(method, identity)
        if identity.role is not Role.HUB:
            log.warning("refused %s from %s (%s)", method, identity.name, identity.role)
            raise permission_denied(HUB_ONLY_MESSAGE)
        return identity

    def _check(self, method: str, identity: Identity) -> None:
        try:
            check_certificate(identity, self._revocations, datetime.now(UTC))
        except ExchangeError as refusal:
            log.warning("refused %s from %s: %s", method, identity.name, refusal.message)
            raise

    def _guard_unary(self, method: str, handler: Any) -> Any:
        inner = handler.unary_unary

        async def guarded(request: Any, context: grpc.aio.ServicerContext) -> Any:
            async with translate_errors(context):
                self._admit(method, context)
            return await inner(request, context)

        return grpc.unary_unary_rpc_method_handler(
            guarded,
            request_deserializer=handler.request_deserializer,
            response_serializer=handler.response_serializer,
        )

    def _guard_stream(self, method: str, handler: Any) -> Any:
        # A stream lives long: the certificate is checked again before each message is handed
        # on, so a revocation ends a stream already open at its next call, as for unary calls.
        inner = handler.stream_stream

        async def guarded(
            requests: AsyncIterator[Any], context: grpc.aio.ServicerContext
        ) -> AsyncIterator[Any]:
            async with translate_errors(context):
                identity = self._admit(method, context)

                async def rechecked() -> AsyncIterator[Any]:
                    async for request in requests:
                        self._check(method, identity)
                        yield request

                async for response in inner(rechecked(), context):
                    yield response

        return grpc.stream_stream_rpc_method_handler(
            guarded,
            request_deserializer=handler.request_deserializer,
            response_serializer=handler.response_serializer,
        )
