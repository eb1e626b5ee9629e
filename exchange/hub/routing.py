"""Reaching the adapter nodes: one reused mTLS channel per replica, and failover between them.

The hub presents its own certificate to adapter nodes and checks that each node's certificate
carries the data source's registered `tls_identity` (grpc.ssl_target_name_override), so a
replica address taken over by another party does not pass. Channels are kept per
(endpoint, tls_identity) and closed after a while unused, so endpoints removed from the
registry do not keep connections forever.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass

import grpc
import grpc.aio

from exchange.errors import deadline_exceeded, not_found, unavailable
from exchange.registry.model import DataSource
from exchange.tls import TlsFiles, channel_credentials
from exchange.v1 import adapter_pb2, adapter_pb2_grpc, common_pb2

log = logging.getLogger(__name__)

MAX_MESSAGE_BYTES = 4 * 1024 * 1024
IDLE_CHANNEL_SECONDS = 600.0
IDLE_CHECK_SECONDS = 60.0  # how often fetches look for idle channels to close


@dataclass
class _Channel:
    channel: grpc.aio.Channel
    stub: adapter_pb2_grpc.AdapterServiceStub
    last_used: float


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
                stub = self._stub(endpoint, source.tls_identity)
                try:
                    response: adapter_pb2.FetchResponse = await stub.Fetch(
                        request, timeout=min(self._adapter_timeout, remaining)
                    )
                except grpc.aio.AioRpcError as error:
                    if error.code() == grpc.StatusCode.NOT_FOUND:
                        raise not_found(
                            f"no {request.certificate_type} record for this subject"
                        ) from None
                    log.warning(
                        "data source %s replica %s failed: %s %s",
                        source.id,
                        endpoint,
                        error.code().name,
                        error.details(),
                    )
                    continue
                return response.document
        if deadline - time.monotonic() <= 0:
            raise deadline_exceeded(f"deadline passed after {attempts} attempt(s)")
        names = ", ".join(repr(s.id) for s in data_sources)
        raise unavailable(f"data source {names} unavailable: {attempts} replica(s) failed")

    def _stub(self, endpoint: str, tls_identity: str) -> adapter_pb2_grpc.AdapterServiceStub:
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
            entry = _Channel(channel, adapter_pb2_grpc.AdapterServiceStub(channel), 0.0)
            self._channels[key] = entry
        entry.last_used = time.monotonic()
        return entry.stub

    async def _close_idle(self) -> None:
        now = time.monotonic()
        self._next_idle_check = now + min(IDLE_CHECK_SECONDS, self._idle_seconds)
        cutoff = now - self._idle_seconds
        idle = [key for key, entry in self._channels.items() if entry.last_used < cutoff]
        for key in idle:
            await self._channels.pop(key).channel.close()

    async def close(self) -> None:
        """Close every channel (at shutdown)."""
        channels, self._channels = self._channels, {}
        for entry in channels.values():
            await entry.channel.close()
