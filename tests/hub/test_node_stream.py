"""The hub's side of FetchStream: when a node goes away or answers nonsense, the fetches
waiting on the stream fail at once and nothing of the stream stays behind in the hub."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import grpc
import grpc.aio
import pytest
from adapter_world import ZHANG, fetch_request, file_type, write_config, write_csv
from pki_fixture import TestPki

from adapters.config import AdapterConfig
from adapters.node import build_adapter_server
from exchange.hub.routing import FetchStream, NodeCallError
from exchange.tls import TlsFiles, channel_credentials, server_credentials
from exchange.v1 import adapter_pb2, adapter_pb2_grpc, common_pb2


@pytest.fixture
def hub_tls(pki: TestPki) -> TlsFiles:
    return pki.identity("hub", "hub", "EXCHANGE")


@contextlib.asynccontextmanager
async def stream_to(port: int, tls: TlsFiles) -> AsyncIterator[FetchStream]:
    """The hub's FetchStream to the node on `port`, over its own mTLS channel."""
    async with grpc.aio.secure_channel(f"127.0.0.1:{port}", channel_credentials(tls)) as channel:
        stream = FetchStream(adapter_pb2_grpc.AdapterServiceStub(channel))  # type: ignore[misc]
        try:
            yield stream
        finally:
            await stream.close()


@contextlib.asynccontextmanager
async def stand_in_node(pki: TestPki, methods: dict[str, Any]) -> AsyncIterator[int]:
    """A node of the test's own making: AdapterService `methods` (name -> method handler)
    served over mTLS with the PSB node's certificate; yields its port."""
    server = grpc.aio.server()
    server.add_generic_rpc_handlers(
        (grpc.method_handlers_generic_handler("exchange.v1.AdapterService", methods),)
    )
    port = server.add_secure_port(
        "127.0.0.1:0", server_credentials(pki.identity("psb-adapter", "adapter", "PSB"))
    )
    await server.start()
    try:
        yield port
    finally:
        await server.stop(None)


async def settled_tasks(before: set[asyncio.Task[Any]]) -> set[asyncio.Task[Any]]:
    """The tasks, besides `before`, this one and the test's own node servers (a process of
    their own in real life), still pending once things have had 5 s to end."""
    this = asyncio.current_task()
    for _ in range(100):
        left = {
            t
            for t in asyncio.all_tasks()
            if t not in before and t is not this and "AioServer" not in repr(t)
        }
        if not left:
            break
        await asyncio.sleep(0.05)
    return left


async def test_a_node_that_stops_leaves_nothing_of_its_stream_behind(
    tmp_path: Path, pki: TestPki, hub_tls: TlsFiles
) -> None:
    write_csv(tmp_path / "residents.csv")
    config = AdapterConfig.from_file(
        write_config(tmp_path, pki, 'kind = "files"\n' + file_type(Path("residents.csv")))
    )
    before = set(asyncio.all_tasks())
    server, port = build_adapter_server(config)
    await server.start()
    async with stream_to(port, hub_tls) as stream:
        answer = await stream.fetch(fetch_request(ZHANG), 10)
        assert common_pb2.Document.FromString(answer.document.payload).fields["name"] == "张伟"

        await server.stop(None)  # the node ends the stream, not the hub
        with pytest.raises(NodeCallError) as refused:
            await stream.fetch(fetch_request(ZHANG), 10)
        # UNAVAILABLE, or INTERNAL when grpc sees the stream reset: any failure but NOT_FOUND
        # sends the router on to the next replica.
        assert refused.value.code in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.INTERNAL)

        assert await settled_tasks(before) == set()


async def test_an_unreadable_answer_ends_the_stream_and_fails_the_fetch_at_once(
    pki: TestPki, hub_tls: TlsFiles
) -> None:
    ended = asyncio.Event()

    async def garbage(calls: AsyncIterator[bytes], context: Any) -> AsyncIterator[bytes]:
        try:
            async for _ in calls:
                yield b"\xff\xff\xff"  # not a FetchResult
        finally:
            ended.set()

    methods = {"FetchStream": grpc.stream_stream_rpc_method_handler(garbage)}
    async with stand_in_node(pki, methods) as port:
        before = set(asyncio.all_tasks())
        async with stream_to(port, hub_tls) as stream:
            with pytest.raises(NodeCallError) as refused:
                await stream.fetch(fetch_request(ZHANG), 30)
            assert refused.value.code == grpc.StatusCode.UNAVAILABLE
            assert refused.value.details == "unreadable answer"
            async with asyncio.timeout(10):
                await ended.wait()  # the hub cancelled the call: the node's side is over too
            assert await settled_tasks(before) == set()


async def test_a_node_without_fetch_stream_is_fetched_from_unary_until_it_has_one(
    pki: TestPki, hub_tls: TlsFiles, monkeypatch: pytest.MonkeyPatch
) -> None:
    # An older node answers FetchStream with UNIMPLEMENTED; once it is upgraded, the hub goes
    # back to the stream by itself, without a restart.
    monkeypatch.setattr("exchange.hub.routing.RETRY_STREAM_AFTER_SECONDS", 0.3)
    served: list[str] = []
    streams_opened = 0
    upgraded = False

    def answer(path: str) -> adapter_pb2.FetchResponse:
        return adapter_pb2.FetchResponse(document=common_pb2.SignedDocument(key_id=path))

    async def fetch(request: adapter_pb2.FetchRequest, context: Any) -> adapter_pb2.FetchResponse:
        served.append("unary")
        return answer("unary")

    async def fetch_stream(
        calls: AsyncIterator[adapter_pb2.FetchCall], context: Any
    ) -> AsyncIterator[adapter_pb2.FetchResult]:
        nonlocal streams_opened
        streams_opened += 1
        if not upgraded:
            await context.abort(grpc.StatusCode.UNIMPLEMENTED, "Method not found!")
        async for call in calls:
            served.append("stream")
            yield adapter_pb2.FetchResult(call_id=call.call_id, response=answer("stream"))

    methods = {
        "Fetch": grpc.unary_unary_rpc_method_handler(
            fetch,
            request_deserializer=adapter_pb2.FetchRequest.FromString,
            response_serializer=adapter_pb2.FetchResponse.SerializeToString,
        ),
        "FetchStream": grpc.stream_stream_rpc_method_handler(
            fetch_stream,
            request_deserializer=adapter_pb2.FetchCall.FromString,
            response_serializer=adapter_pb2.FetchResult.SerializeToString,
        ),
    }
    async with stand_in_node(pki, methods) as port, stream_to(port, hub_tls) as stream:
        assert (await stream.fetch(fetch_request(ZHANG), 10)).document.key_id == "unary"
        assert (await stream.fetch(fetch_request(ZHANG), 10)).document.key_id == "unary"
        assert served == ["unary", "unary"]
        assert streams_opened == 1  # tried once, not before every fetch

        upgraded = True
        await asyncio.sleep(0.4)
        assert (await stream.fetch(fetch_request(ZHANG), 10)).document.key_id == "stream"
        assert (await stream.fetch(fetch_request(ZHANG), 10)).document.key_id == "stream"
    assert served == ["unary", "unary", "stream", "stream"]
    assert streams_opened == 2  # one stream carried both
