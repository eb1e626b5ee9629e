"""The gate every call to the hub passes first: who is calling, and may that role call this method.

The TLS handshake has already refused callers without a certificate from our CA. The gate reads
the verified certificate (exchange/identity.py), refuses it if the CA has revoked it or it has
expired since the connection was made (exchange/revocation.py: the CRL is re-read when it
changes, so a revocation counts on the next call of an open connection), checks the caller's
role against the one table below, checks that a department caller's department is registered,
and only then lets the handler run, with `CURRENT_IDENTITY` set for it. A request that is too
large or does not even parse is refused here too, with INVALID_ARGUMENT instead of gRPC's
generic INTERNAL.

Every refusal is written to the audit log (EventKind.CALL_REFUSED) before the caller hears it,
and the caller gets the entry's receipt in the trailing metadata, as for a refused lookup.
"""

from __future__ import annotations

import inspect
import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from contextvars import ContextVar
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Protocol

import grpc
import grpc.aio

from audit.events import AuditEvent, AuditSink, EventKind
from exchange.errors import (
    ExchangeError,
    as_exchange_error,
    invalid_argument,
    permission_denied,
    unauthenticated,
)
from exchange.hub.outcomes import failure_metadata, outcome_of
from exchange.identity import CURRENT_IDENTITY, Identity, Role, identity_from_context
from exchange.registry.snapshot import RegistrySnapshot
from exchange.revocation import RevocationList, check_certificate

log = logging.getLogger(__name__)

ANY_ROLE = frozenset(Role)

# Who may call which service. A service not listed here is closed to everyone.
SERVICE_ROLES: Mapping[str, frozenset[Role]] = {
    "exchange.v1.LookupService": frozenset({Role.DEPARTMENT}),
    "exchange.v1.RegistryService": frozenset({Role.ADMIN}),
    "exchange.v1.AuditService": frozenset({Role.AUDITOR}),
    "grpc.health.v1.Health": ANY_ROLE,
    "grpc.reflection.v1alpha.ServerReflection": ANY_ROLE,
    "grpc.reflection.v1.ServerReflection": ANY_ROLE,
}


class Catalogue(Protocol):
    """Where the gate reads the registered departments from (the registry store)."""

    async def snapshot(self) -> RegistrySnapshot: ...


# Requests larger than this are refused before they are parsed. A lookup names one type, one
# subject and a few short codes (plus a consent token of at most 4 KiB): 16 KiB is ample.
# Other methods are bounded only by the server's message size limit.
REQUEST_BYTES: Mapping[str, int] = {"/exchange.v1.LookupService/Lookup": 16 * 1024}


@dataclass(frozen=True)
class Unreadable:
    """Stands in for a request the gate will refuse unread (too large, or not parseable),
    so that the refusal can wait until the caller's identity is known and be audited."""

    problem: str


Admit = Callable[[Any, Any], Awaitable[Identity]]

# The registry snapshot the gate admitted a department's call with, for its handler to decide
# on: read after the call began, so as current as a second read, at no second cost. Each call
# runs in a task of its own, so the value never reaches another call.
CALL_SNAPSHOT: ContextVar[RegistrySnapshot | None] = ContextVar("call_snapshot", default=None)


class Gate:
    """Authenticates and authorises every call, and audits every refusal.

    Applied to every method handler when its service is registered (exchange/gated_server.py):
    `gate(method, handler)` is the handler with `admit` awaited before it.
    """

    def __init__(
        self,
        catalogue: Catalogue,
        audit: AuditSink,
        service_roles: Mapping[str, frozenset[Role]] = SERVICE_ROLES,
        revocations: RevocationList | None = None,
    ) -> None:
        self._catalogue = catalogue
        self._audit = audit
        self._service_roles = service_roles
        self._revocations = revocations

    def __call__(self, method: str, handler: grpc.RpcMethodHandler) -> grpc.RpcMethodHandler:
        """`handler` (serving `method`) wrapped so that `admit` runs before it."""

        async def admit(request: Any, context: Any) -> Identity:
            return await self.admit(method, request, context)

        return guarded(handler, admit, method, REQUEST_BYTES.get(method))

    async def admit(self, method: str, request: Any, context: Any) -> Identity:
        """The caller's identity, set as CURRENT_IDENTITY; aborts the call (audited) if refused."""
        identity: Identity | None = None
        try:
            identity = identity_from_context(context)
            check_certificate(identity, self._revocations, datetime.now(UTC))
            await self._authorise(method, identity)
            if isinstance(request, Unreadable):
                raise invalid_argument(request.problem)
        except Exception as exc:  # every refusal is audited, then answered
            await self._refuse(context, method, identity, as_exchange_error(exc))
        assert identity is not None  # _refuse never returns
        CURRENT_IDENTITY.set(identity)
        return identity

    async def _authorise(self, method: str, identity: Identity) -> None:
        roles = self._service_roles.get(service_of(method), frozenset())
        if identity.role not in roles:
            raise permission_denied(f"role {identity.role.value!r} may not call {method}")
        if identity.role is Role.DEPARTMENT:
            snapshot = await self._catalogue.snapshot()
            if snapshot.department(identity.department) is None:
                raise unauthenticated(f"department {identity.department!r} is not registered")
            CALL_SNAPSHOT.set(snapshot)

    async def _refuse(
        self, context: Any, method: str, identity: Identity | None, error: ExchangeError
    ) -> None:
        event = AuditEvent(
            event=EventKind.CALL_REFUSED,
            outcome=outcome_of(error.status),
            status=error.status.name,
            method=method,
            caller=identity.name if identity else "",
            requester_department=identity.department if identity else "",
            role=identity.role.value if identity else "",
            reason=error.message,
        )
        try:
            receipt = await self._audit.append(event)
        except Exception as exc:  # no refusal leaves unaudited
            log.error("could not audit a refused call to %s: %s", method, error, exc_info=exc)
            await context.abort(grpc.StatusCode.INTERNAL, as_exchange_error(exc).message)
        await context.abort(error.status, error.message, failure_metadata(receipt))


def service_of(method: str) -> str:
    """The full service name of a method path: "/pkg.Service/Method" -> "pkg.Service"."""
    return method.lstrip("/").partition("/")[0]


def guarded(
    handler: grpc.RpcMethodHandler, admit: Admit, method: str, max_bytes: int | None = None
) -> grpc.RpcMethodHandler:
    """`handler` with `admit(request, context)` awaited before its behaviour, for all four kinds.

    A unary request that is over `max_bytes` or does not parse reaches `admit` as Unreadable.

    Each wrapper keeps the style of what it wraps (coroutine or async generator), because
    grpc.aio handles a streaming coroutine that calls context.write() differently from an
    async generator that yields.
    """
    if handler.unary_unary is not None:
        return handler._replace(
            unary_unary=_wrap_unary(handler.unary_unary, admit),
            request_deserializer=_tolerant(handler.request_deserializer, method, max_bytes),
        )
    if handler.unary_stream is not None:
        return handler._replace(
            unary_stream=_wrap_stream(handler.unary_stream, admit),
            request_deserializer=_tolerant(handler.request_deserializer, method, max_bytes),
        )
    if handler.stream_unary is not None:
        return handler._replace(stream_unary=_wrap_unary(handler.stream_unary, admit))
    return handler._replace(
        stream_stream=_wrap_stream(handler.stream_stream, admit, admit_each_message=True)
    )


def _wrap_unary(behavior: Callable[..., Any], admit: Admit) -> Callable[..., Any]:
    async def unary(request: Any, context: Any) -> Any:
        await admit(request, context)
        result = behavior(request, context)
        return await result if inspect.isawaitable(result) else result

    return unary


def _wrap_stream(
    behavior: Callable[..., Any], admit: Admit, *, admit_each_message: bool = False
) -> Callable[..., Any]:
    """With admit_each_message, a stream of requests is admitted again before each message:
    a stream can stay open for hours, and a revocation must end it at its next message, as
    it ends the next unary call."""

    async def admitted(request: Any, context: Any) -> Any:
        await admit(request, context)
        return _each_admitted(request, admit, context) if admit_each_message else request

    if inspect.isasyncgenfunction(behavior):

        async def stream_generator(request: Any, context: Any) -> AsyncIterator[Any]:
            async for response in behavior(await admitted(request, context), context):
                yield response

        return stream_generator

    async def stream_writer(request: Any, context: Any) -> Any:
        result = behavior(await admitted(request, context), context)
        if inspect.isawaitable(result):
            return await result
        for response in result or ():  # a plain generator: hand its responses over
            await context.write(response)
        return None

    return stream_writer


async def _each_admitted(
    requests: AsyncIterator[Any], admit: Admit, context: Any
) -> AsyncIterator[Any]:
    async for request in requests:
        await admit(request, context)
        yield request


def _tolerant(
    deserializer: Callable[[bytes], Any] | None, method: str, max_bytes: int | None
) -> Callable[[bytes], Any] | None:
    if deserializer is None:
        return None

    def deserialize(data: bytes) -> Any:
        if max_bytes is not None and len(data) > max_bytes:
            return Unreadable(f"request is {len(data)} bytes, at most {max_bytes} for {method}")
        try:
            return deserializer(data)
        except Exception:  # any parse failure is the caller's malformed request
            return Unreadable(f"request is not a valid message for {method}")

    return deserialize
