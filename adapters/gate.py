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
from datetime import UTC, datetime
from typing import Any

import grpc
import grpc.aio

from exchange.errors import ExchangeError, permission_denied, translate_errors
from exchange.identity import Role, identity_from_context
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
        # Every AdapterService method is unary-unary; a new streaming method must be added here.
        if handler.unary_unary is None:
            raise TypeError(f"{method}: the hub-only gate handles unary methods only")
        inner = handler.unary_unary

        async def guarded(request: Any, context: grpc.aio.ServicerContext) -> Any:
            async with translate_errors(context):
                identity = identity_from_context(context)
                try:
                    check_certificate(identity, self._revocations, datetime.now(UTC))
                except ExchangeError as refusal:
                    log.warning("refused %s from %s: %s", method, identity.name, refusal.message)
                    raise
                if identity.role is not Role.HUB:
                    log.warning("refused %s from %s (%s)", method, identity.name, identity.role)
                    raise permission_denied(HUB_ONLY_MESSAGE)
            return await inner(request, context)

        return grpc.unary_unary_rpc_method_handler(
            guarded,
            request_deserializer=handler.request_deserializer,
            response_serializer=handler.response_serializer,
        )
