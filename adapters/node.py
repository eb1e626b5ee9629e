"""The adapter node: AdapterService over mutual TLS, answering the hub from a department backend.

A Fetch reads one record, keeps exactly the fields the hub released that the record has
(minimisation happens here, at the source, so withheld data never leaves the department),
binds the hub's request id into the Document and signs it with the department's key.
`build_adapter_server` assembles the whole node: gate, AdapterService, health, reflection.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from datetime import UTC, datetime

import grpc
import grpc.aio
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_health.v1.health import aio as health_aio
from grpc_reflection.v1alpha import reflection

from adapters.backends import Backend, Record
from adapters.config import AdapterConfig
from adapters.gate import HubOnlyGate
from adapters.signing import DocumentSigner
from audit.events import SubjectId
from exchange.errors import (
    as_exchange_error,
    deadline_exceeded,
    invalid_argument,
    not_found,
    resource_exhausted,
    translate_errors,
)
from exchange.gated_server import GatedServer
from exchange.pki import load_signing_key
from exchange.revocation import revocation_list_for
from exchange.subject import validate_subject
from exchange.timestamps import set_timestamp
from exchange.tls import MAX_MESSAGE_BYTES, server_credentials
from exchange.v1 import adapter_pb2, adapter_pb2_grpc, common_pb2

log = logging.getLogger(__name__)

SERVICE_NAME = adapter_pb2.DESCRIPTOR.services_by_name["AdapterService"].full_name
MAX_REQUEST_ID = 128
MAX_CALLS_IN_FLIGHT = 256  # per FetchStream
# A signed record larger than this is refused on its own: the hub must be able to receive
# it (on a stream, a message over its limit would end every call on the stream) and to pass
# it on with its receipt.
MAX_RESPONSE_BYTES = MAX_MESSAGE_BYTES - 64 * 1024


class AdapterServicer(adapter_pb2_grpc.AdapterServiceServicer):
    """AdapterService for one department; callers were checked by the gate (role "hub")."""

    def __init__(self, department: str, backend: Backend, signer: DocumentSigner) -> None:
        self.department = department
        self.backend = backend
        self.signer = signer
        self.served = backend.served_types()
        self._intakes: set[asyncio.Task[None]] = set()  # each open stream's reading task
        self._draining = False

    async def Fetch(
        self, request: adapter_pb2.FetchRequest, context: grpc.aio.ServicerContext
    ) -> adapter_pb2.FetchResponse:
        """The subject's record of the type with only the requested fields, signed."""
        async with translate_errors(context):
            return await self._fetch(request)

    async def FetchStream(
        self,
        calls: AsyncIterator[adapter_pb2.FetchCall],
        context: grpc.aio.ServicerContext,
    ) -> AsyncIterator[adapter_pb2.FetchResult]:
        """Fetch for every FetchCall on the stream, each answered when it is done.

        Calls run concurrently, at most MAX_CALLS_IN_FLIGHT at a time: a call holds its slot
        until its result is on its way, and the next message is not read before a slot is free,
        which pushes back on the hub through HTTP/2 flow control. A call's failure is its
        FetchResult's status; only a failure of the stream itself (the gate refusing the
        caller's certificate, say) or the node's shutdown ends the stream.
        """
        if self._draining:
            return  # shutting down: the hub opens its next stream elsewhere
        slots = asyncio.Semaphore(MAX_CALLS_IN_FLIGHT)
        results: asyncio.Queue[adapter_pb2.FetchResult | None] = asyncio.Queue()
        running: set[asyncio.Task[None]] = set()
        intake = asyncio.create_task(self._take_calls(calls, slots, results, running))
        self._intakes.add(intake)  # at once: a drain() from here on reaches this stream
        answering = asyncio.create_task(self._answer_calls(intake, running, results))
        try:
            while (result := await results.get()) is not None:
                yield result
                slots.release()
        except BaseException:
            answering.cancel()
            raise
        await answering  # re-raises what ended the stream on the hub's side, if anything

    async def _take_calls(
        self,
        calls: AsyncIterator[adapter_pb2.FetchCall],
        slots: asyncio.Semaphore,
        results: asyncio.Queue[adapter_pb2.FetchResult | None],
        running: set[asyncio.Task[None]],
    ) -> None:
        # A slot first, then the message: the gate checks the caller's certificate as each
        # message is read, so right before its call starts, however long it waited for a slot.
        iterator = aiter(calls)
        while True:
            await slots.acquire()
            try:
                call = await anext(iterator)
            except StopAsyncIteration:
                return
            task = asyncio.create_task(self._answer(call, results))
            running.add(task)
            task.add_done_callback(running.discard)

    async def _answer(
        self, call: adapter_pb2.FetchCall, results: asyncio.Queue[adapter_pb2.FetchResult | None]
    ) -> None:
        results.put_nowait(await self._result(call))

    async def _answer_calls(
        self,
        intake: asyncio.Task[None],
        running: set[asyncio.Task[None]],
        results: asyncio.Queue[adapter_pb2.FetchResult | None],
    ) -> None:
        """Wait for the stream's intake to end (the hub is done, or drain() stopped it), then
        for the calls it took; None on `results` says that all is answered."""
        try:
            try:
                await intake
            except asyncio.CancelledError:
                this = asyncio.current_task()
                if this is not None and this.cancelling():
                    raise  # the stream itself is being cancelled
                # drain() stopped the intake: the calls taken are still answered.
            if running:
                await asyncio.wait(running)
        finally:
            self._intakes.discard(intake)
            intake.cancel()
            for task in running:
                task.cancel()
            results.put_nowait(None)

    def drain(self) -> None:
        """Take no more calls (at shutdown): each open stream ends, with OK, once the calls it
        has taken are answered, so the server's grace period is not spent waiting on streams
        that would otherwise stay open for as long as the hub runs."""
        self._draining = True
        for intake in list(self._intakes):
            intake.cancel()

    async def _result(self, call: adapter_pb2.FetchCall) -> adapter_pb2.FetchResult:
        deadline: asyncio.Timeout | None = None
        try:
            if call.timeout_ms == 0:
                raise invalid_argument("timeout_ms: required")
            deadline = asyncio.timeout(call.timeout_ms / 1000)
            async with deadline:
                response = await self._fetch(call.request)
            return adapter_pb2.FetchResult(call_id=call.call_id, response=response)
        except Exception as exc:
            if isinstance(exc, TimeoutError) and deadline is not None and deadline.expired():
                error = deadline_exceeded(f"no answer within {call.timeout_ms} ms")
            else:  # a backend's own TimeoutError too: INTERNAL, logged, as from unary Fetch
                error = as_exchange_error(exc)
        return adapter_pb2.FetchResult(
            call_id=call.call_id,
            status=adapter_pb2.CallStatus(code=error.status.value[0], message=error.message),
        )

    async def _fetch(self, request: adapter_pb2.FetchRequest) -> adapter_pb2.FetchResponse:
        subject = self._check(request)
        record = await self.backend.fetch(request.certificate_type, subject)
        if record is None:
            self._note(request, "not found")
            raise not_found(f"no {request.certificate_type} record for this subject")
        document = self._document(request, subject, record)
        response = adapter_pb2.FetchResponse(document=self.signer.sign(document))
        if (size := response.ByteSize()) > MAX_RESPONSE_BYTES:
            self._note(request, f"too large to send ({size} bytes)")
            raise resource_exhausted(
                f"the signed {request.certificate_type} record is {size} bytes, more than the "
                f"{MAX_RESPONSE_BYTES} a response may carry"
            )
        self._note(request, f"released {sorted(document.fields)}")
        return response

    async def Describe(
        self, request: adapter_pb2.DescribeRequest, context: grpc.aio.ServicerContext
    ) -> adapter_pb2.DescribeResponse:
        """The certificate types and fields served, and the signing key in use."""
        async with translate_errors(context):
            return adapter_pb2.DescribeResponse(
                department=self.department,
                certificate_types=[
                    adapter_pb2.ServedCertificateType(code=code, fields=fields)
                    for code, fields in sorted(self.served.items())
                ],
                key_id=self.signer.key_id,
                public_key=self.signer.public_key_raw,
            )

    def _check(self, request: adapter_pb2.FetchRequest) -> SubjectId:
        if not request.certificate_type:
            raise invalid_argument("certificate_type: required")
        if not request.request_id:
            raise invalid_argument("request_id: required (it is bound into the signature)")
        if len(request.request_id) > MAX_REQUEST_ID:
            raise invalid_argument(f"request_id: at most {MAX_REQUEST_ID} characters")
        subject = validate_subject(request.subject)
        known = self.served.get(request.certificate_type)
        if known is None:
            raise not_found(f"certificate type {request.certificate_type!r} is not served here")
        unknown = [name for name in request.fields if name not in known]
        if unknown:
            raise invalid_argument(
                f"fields: {unknown[0]!r} is not a field of {request.certificate_type} "
                f"(known: {', '.join(known)})"
            )
        return subject

    def _document(
        self, request: adapter_pb2.FetchRequest, subject: SubjectId, record: Record
    ) -> common_pb2.Document:
        document = common_pb2.Document(
            document_id=record.document_id,
            certificate_type=request.certificate_type,
            subject=common_pb2.Subject(kind=request.subject.kind, id=subject.id),
            issuer=self.department,
            fields={name: record.fields[name] for name in request.fields if name in record.fields},
            request_id=request.request_id,
        )
        set_timestamp(document.issued_at, record.issued_at)
        if record.valid_until is not None:
            set_timestamp(document.valid_until, record.valid_until)
        set_timestamp(document.signed_at, datetime.now(UTC))
        return document

    @staticmethod
    def _note(request: adapter_pb2.FetchRequest, outcome: str) -> None:
        # The department's own record of who asked and why; the subject id stays out of logs.
        log.info(
            "fetch %s request_id=%s requester=%s purpose=%r: %s",
            request.certificate_type,
            request.request_id,
            request.requester_department,
            request.purpose,
            outcome,
        )


class AdapterServer(GatedServer):
    """The node's grpc.aio.Server: every service behind the hub-only gate, health reported on
    start and stop, the backend closed when it stops."""

    def __init__(
        self,
        server: grpc.aio.Server,
        gate: HubOnlyGate,
        health: health_aio.HealthServicer,
        backend: Backend | None,
        servicer: AdapterServicer,
    ) -> None:
        super().__init__(server, gate)
        self._health = health
        self._servicer = servicer
        self._backend = backend  # None when the caller owns (and closes) the backend

    def add_insecure_port(self, address: str) -> int:
        """Refused: an adapter node serves only over mutual TLS."""
        raise RuntimeError("an adapter node serves only over mutual TLS")

    async def start(self) -> None:
        """Start serving and report AdapterService as SERVING."""
        await self._server.start()
        await self._health.set(SERVICE_NAME, health_pb2.HealthCheckResponse.SERVING)

    async def stop(self, grace: float | None) -> None:
        """Report NOT_SERVING, let calls finish for `grace` seconds, then close the backend."""
        await self._health.enter_graceful_shutdown()
        self._servicer.drain()
        await self._server.stop(grace)
        backend, self._backend = self._backend, None
        if backend is not None:
            await backend.close()


def build_adapter_server(
    config: AdapterConfig, backend: Backend | None = None
) -> tuple[grpc.aio.Server, int]:
    """The adapter node's server, bound (not started) on config.listen, and its port.

    The backend comes from the config unless one is given; a given backend stays the caller's
    to close, one built here is closed by `server.stop()`. Raises OSError if the address
    cannot be bound and ValueError for a bad backend config or signing key.
    """
    owned = backend is None
    if backend is None:
        backend = config.load_backend()
    signer = DocumentSigner(load_signing_key(config.signing_key))
    # No SO_REUSEPORT: a second node on a taken port must fail, not silently share the traffic.
    revocations = revocation_list_for(config.tls.ca, config.crl)
    health = health_aio.HealthServicer()
    servicer = AdapterServicer(config.department, backend, signer)
    server = AdapterServer(
        grpc.aio.server(options=[("grpc.so_reuseport", 0)]),
        HubOnlyGate(revocations),
        health,
        backend if owned else None,
        servicer,
    )
    adapter_pb2_grpc.add_AdapterServiceServicer_to_server(servicer, server)
    health_pb2_grpc.add_HealthServicer_to_server(health, server)
    reflection.enable_server_reflection(
        (
            SERVICE_NAME,
            health_pb2.DESCRIPTOR.services_by_name["Health"].full_name,
            reflection.SERVICE_NAME,
        ),
        server,
    )
    try:
        port = server.add_secure_port(config.listen, server_credentials(config.tls))
    except RuntimeError as exc:  # grpc raises RuntimeError when the address is taken
        raise OSError(f"cannot listen on {config.listen}: {exc}") from exc
    if port == 0:
        raise OSError(f"cannot listen on {config.listen}")
    log.info("adapter node for %s bound to %s (port %d)", config.department, config.listen, port)
    return server, port
