"""Reaching the adapter nodes: one reused mTLS channel per replica, and failover between them.

The hub presents its own certificate to adapter nodes and checks that each node's certificate
carries the data source's registered `tls_identity` (grpc.ssl_target_name_override), so a
replica address taken over by another party does not pass. Channels are kept per
(endpoint, tls_identity) and closed after a while unused, so endpoints removed from the
registry do not keep connections forever.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import math
import time
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass

import grpc
import grpc.aio

from exchange.errors import deadline_exceeded, not_found, unavailable
from exchange.registry.model import DataSource
from exchange.tls import MAX_MESSAGE_BYTES, TlsFiles, channel_credentials
from exchange.v1 import adapter_pb2, adapter_pb2_grpc, common_pb2

log = logging.getLogger(__name__)

IDLE_CHANNEL_SECONDS = 600.0
IDLE_CHECK_SECONDS = 60.0  # how often fetches look for idle channels to close
RETRY_STREAM_AFTER_SECONDS = 300.0  # how long a node without FetchStream is called unary


class NodeCallError(Exception):
    """One fetch from one node failed, with the status the node (or the transport) gave."""

    def __init__(self, code: grpc.StatusCode, details: str) -> None:
        super().__init__(f"{code.name}: {details}")
        self.code = code
        self.details = details


_STATUS_BY_VALUE = {status.value[0]: status for status in grpc.StatusCode}


class _OpenStream:
    """One open FetchStream call and the fetches waiting on it.

    Calls are queued in `outbox`, which grpc.aio's own task drains onto the stream one write
    at a time: a fetch never waits for its write to complete, nor for another fetch's.
    """

    def __init__(self, stub: adapter_pb2_grpc.AdapterServiceStub) -> None:
        self.waiting: dict[int, asyncio.Future[adapter_pb2.FetchResult]] = {}
        self.answered = False  # has the node sent anything on this stream yet
        # None ends the calls: grpc.aio stops its writer task itself only when the call is
        # cancelled here, not when the node ends the stream.
        self.outbox: asyncio.Queue[adapter_pb2.FetchCall | None] = asyncio.Queue()
        self.call: grpc.aio.StreamStreamCall = stub.FetchStream(self._calls())
        self.receiver: asyncio.Task[None] | None = None  # held: the loop keeps tasks weakly

    async def _calls(self) -> AsyncIterator[adapter_pb2.FetchCall]:
        while (call := await self.outbox.get()) is not None:
            if call.call_id in self.waiting:  # not one whose fetch has given up meanwhile
                yield call

    def end(self, failure: NodeCallError) -> None:
        """Stop writing, cancel the call (if the node has not ended it) and fail every fetch
        still waiting with `failure`."""
        self.outbox.put_nowait(None)
        self.call.cancel()
        for waiting in self.waiting.values():
            if not waiting.done():
                waiting.set_exception(failure)


class FetchStream:
    """The hub's fetches to one node, multiplexed over one open AdapterService.FetchStream.

    A unary call costs grpc's Python machinery several times the CPU of one message on an open
    stream, on both ends, so fetches go as FetchCall messages, each matched to its FetchResult
    by call_id. The stream opens on first use and again after it ends; when it ends, every
    fetch waiting on it fails at once, UNAVAILABLE or with the status the stream ended with
    (the router moves on to the next replica). A node without FetchStream (UNIMPLEMENTED) is
    called with unary Fetch for a while, then tried again.
    """

    def __init__(self, stub: adapter_pb2_grpc.AdapterServiceStub) -> None:
        self._stub = stub
        self._stream: _OpenStream | None = None
        self._call_ids = itertools.count(1)
        self._unary_until = 0.0  # time.monotonic() until which this node is called unary

    async def fetch(
        self, request: adapter_pb2.FetchRequest, within: float
    ) -> adapter_pb2.FetchResponse:
        """The node's answer to `request` within `within` seconds; NodeCallError if none."""
        started = time.monotonic()
        if started < self._unary_until:
            return await self._fetch_unary(request, within)
        try:
            return await self._fetch_streamed(request, within)
        except NodeCallError:
            if time.monotonic() >= self._unary_until:  # the stream did not just fail as refused
                raise
        # A node that predates FetchStream: this fetch, and those of the next few minutes (it
        # may be upgraded meanwhile), go unary.
        return await self._fetch_unary(request, max(0.001, within - (time.monotonic() - started)))

    async def _fetch_streamed(
        self, request: adapter_pb2.FetchRequest, within: float
    ) -> adapter_pb2.FetchResponse:
        stream = self._stream if self._stream is not None else self._open()
        call_id = next(self._call_ids)
        result: asyncio.Future[adapter_pb2.FetchResult] = asyncio.get_running_loop().create_future()
        stream.waiting[call_id] = result
        call = adapter_pb2.FetchCall(
            call_id=call_id, request=request, timeout_ms=max(1, math.ceil(within * 1000))
        )
        # If the write fails, grpc.aio cancels the call; the receiver then fails this fetch.
        stream.outbox.put_nowait(call)
        try:
            async with asyncio.timeout(within):
                answer = await result
        except TimeoutError:
            raise NodeCallError(
                grpc.StatusCode.DEADLINE_EXCEEDED, f"no answer within {within:.3f} s"
            ) from None
        finally:
            stream.waiting.pop(call_id, None)
        if answer.WhichOneof("outcome") == "response":
            return answer.response
        code = _STATUS_BY_VALUE.get(answer.status.code, grpc.StatusCode.UNKNOWN)
        raise NodeCallError(code, answer.status.message)

    def _open(self) -> _OpenStream:
        stream = _OpenStream(self._stub)
        self._stream = stream
        stream.receiver = asyncio.get_running_loop().create_task(self._receive(stream))
        return stream

    async def _receive(self, stream: _OpenStream) -> None:
        ended = NodeCallError(grpc.StatusCode.UNAVAILABLE, "stream to the node ended")
        try:
            async for answer in stream.call:
                if answer is None:  # grpc.aio's word for a message that does not parse
                    log.warning("a node answered with an unreadable FetchResult; stream ended")
                    ended = NodeCallError(grpc.StatusCode.UNAVAILABLE, "unreadable answer")
                    break
                stream.answered = True
                waiting = stream.waiting.get(answer.call_id)
                if waiting is not None and not waiting.done():
                    waiting.set_result(answer)
        except grpc.aio.AioRpcError as error:
            if _refused_at_once(error, stream.answered):
                self._unary_until = time.monotonic() + RETRY_STREAM_AFTER_SECONDS
                log.info("a node has no FetchStream (an older version); fetching with unary Fetch")
            ended = NodeCallError(error.code(), error.details() or "stream to the node ended")
        except asyncio.CancelledError:
            pass  # how grpc.aio ends the iteration of a call cancelled by close() or a failed write
        except Exception:
            log.exception("reading a node's FetchStream failed; stream ended")
        finally:
            if self._stream is stream:
                self._stream = None
            stream.end(ended)

    async def _fetch_unary(
        self, request: adapter_pb2.FetchRequest, within: float
    ) -> adapter_pb2.FetchResponse:
        try:
            response: adapter_pb2.FetchResponse = await self._stub.Fetch(request, timeout=within)
        except grpc.aio.AioRpcError as error:
            raise NodeCallError(error.code(), error.details() or "") from None
        return response

    async def close(self) -> None:
        """End the stream (fetches waiting on it fail as UNAVAILABLE)."""
        stream, self._stream = self._stream, None
        if stream is not None:
            stream.call.cancel()


def _refused_at_once(error: grpc.aio.AioRpcError, answered: bool) -> bool:
    """Whether a stream ended as a node without FetchStream ends it: UNIMPLEMENTED, or,
    before any answer, grpc.aio's INTERNAL "Internal error from Core". The node refuses the
    call as soon as it sees it; when that refusal arrives before the hub's first write, the
    write fails and grpc.aio reports that failure in place of the node's status (measured:
    3 to 4 in 30 runs of tests/hub/test_hub_integrity.py failed so)."""
    if error.code() == grpc.StatusCode.UNIMPLEMENTED:
        return True
    return not answered and error.code() == grpc.StatusCode.INTERNAL


@dataclass
class _Channel:
    channel: grpc.aio.Channel
    stream: FetchStream
    last_used: float = 0.0

    async def close(self) -> None:
        await self.stream.close()
        await self.channel.close()


class Router:
    """Fetches a signed document from the data sources of a type, replica after replica."""

    def __init__(
        self,
        tls: TlsFiles,
        adapter_timeout_seconds: float,
        idle_channel_seconds: float = IDLE_CHANNEL_SECONDS,
    ) -> None:
        self._credentials = channel_credentials(tls)
        self._adapter_timeout = adapter_timeout_seconds
        self._idle_seconds = idle_channel_seconds
        self._channels: dict[tuple[str, str], _Channel] = {}
        self._next_idle_check = time.monotonic() + min(IDLE_CHECK_SECONDS, idle_channel_seconds)

    async def fetch(
        self,
        data_sources: Sequence[DataSource],
        request: adapter_pb2.FetchRequest,
        deadline: float,
    ) -> common_pb2.SignedDocument:
        """The document from the first replica that answers, trying each in registry order.

        `deadline` is a time.monotonic() instant bounding the whole fetch. An unknown subject
        (NOT_FOUND) is the answer; any other failure of one replica moves on to the next.
        Raises not_found, unavailable (every replica failed) or deadline_exceeded.
        """
        if time.monotonic() >= self._next_idle_check:
            await self._close_idle()
        if not data_sources:
            raise unavailable(f"no data source is enabled for {request.certificate_type!r}")
        attempts = 0
        for source in data_sources:
            for endpoint in source.endpoints:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise deadline_exceeded(
                        f"deadline passed after {attempts} attempt(s) at the data source"
                    )
                attempts += 1
                stream = self._stream(endpoint, source.tls_identity)
                try:
                    response = await stream.fetch(request, min(self._adapter_timeout, remaining))
                except NodeCallError as error:
                    if error.code == grpc.StatusCode.NOT_FOUND:
                        raise not_found(
                            f"no {request.certificate_type} record for this subject"
                        ) from None
                    log.warning(
                        "data source %s replica %s failed: %s %s",
                        source.id,
                        endpoint,
                        error.code.name,
                        error.details,
                    )
                    continue
                return response.document
        if deadline - time.monotonic() <= 0:
            raise deadline_exceeded(f"deadline passed after {attempts} attempt(s)")
        names = ", ".join(repr(s.id) for s in data_sources)
        raise unavailable(f"data source {names} unavailable: {attempts} replica(s) failed")

    def _stream(self, endpoint: str, tls_identity: str) -> FetchStream:
        key = (endpoint, tls_identity)
        entry = self._channels.get(key)
        if entry is None:
            channel = grpc.aio.secure_channel(
                endpoint,
                self._credentials,
                options=[
                    ("grpc.ssl_target_name_override", tls_identity),
                    ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
                ],
            )
            entry = _Channel(channel, FetchStream(adapter_pb2_grpc.AdapterServiceStub(channel)))
            self._channels[key] = entry
        entry.last_used = time.monotonic()
        return entry.stream

    async def _close_idle(self) -> None:
        now = time.monotonic()
        self._next_idle_check = now + min(IDLE_CHECK_SECONDS, self._idle_seconds)
        cutoff = now - self._idle_seconds
        idle = [key for key, entry in self._channels.items() if entry.last_used < cutoff]
        for key in idle:
            await self._channels.pop(key).close()

    async def close(self) -> None:
        """Close every channel (at shutdown)."""
        channels, self._channels = self._channels, {}
        for entry in channels.values():
            await entry.close()
