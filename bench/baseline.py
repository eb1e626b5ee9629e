"""The baseline the hub is measured against: the same chain of calls with nothing in between.

    client --Lookup--> forwarder --Fetch--> echo

Plaintext gRPC, the exchange's own messages: the forwarder parses each LookupRequest, sends
a FetchRequest over its one channel to the echo server, which answers with a canned
FetchResponse, and returns a LookupResponse. The canned document and receipt are a real
response of the hub (a file holding a serialized LookupResponse), so the bytes on the wire
are the same size; what is missing is exactly what the hub adds: TLS, authentication,
policy, signing, signature checking and the durable audit log.

    python -m bench.baseline echo --listen 127.0.0.1:PORT --response FILE
    python -m bench.baseline forward --listen 127.0.0.1:PORT --upstream HOST:PORT --response FILE
"""

from __future__ import annotations

import argparse
import asyncio
import signal
from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import grpc.aio

from exchange.v1 import adapter_pb2, adapter_pb2_grpc, lookup_pb2, lookup_pb2_grpc


class Echo(adapter_pb2_grpc.AdapterServiceServicer):
    """AdapterService answering every Fetch with the same document."""

    def __init__(self, canned: lookup_pb2.LookupResponse) -> None:
        self._response = adapter_pb2.FetchResponse(document=canned.document)

    async def Fetch(
        self, request: adapter_pb2.FetchRequest, context: grpc.aio.ServicerContext
    ) -> adapter_pb2.FetchResponse:
        """The canned document."""
        return self._response

    async def FetchStream(
        self,
        request_iterator: AsyncIterator[adapter_pb2.FetchCall],
        context: grpc.aio.ServicerContext,
    ) -> AsyncIterator[adapter_pb2.FetchResult]:
        """Not part of the baseline: its forwarder makes one unary Fetch per lookup."""
        await context.abort(grpc.StatusCode.UNIMPLEMENTED, "the baseline echo only fetches")
        yield adapter_pb2.FetchResult()  # unreachable: context.abort raises

    async def Describe(
        self, request: adapter_pb2.DescribeRequest, context: grpc.aio.ServicerContext
    ) -> adapter_pb2.DescribeResponse:
        """Not part of the baseline."""
        await context.abort(grpc.StatusCode.UNIMPLEMENTED, "the baseline echo only fetches")
        raise AssertionError("unreachable: context.abort raises")


class Forwarder(lookup_pb2_grpc.LookupServiceServicer):
    """LookupService passing each lookup on as a Fetch, and the document back."""

    def __init__(self, upstream: str, canned: lookup_pb2.LookupResponse) -> None:
        self._channel = grpc.aio.insecure_channel(upstream)
        self._adapter = adapter_pb2_grpc.AdapterServiceStub(self._channel)
        self._receipt = canned.receipt

    async def Lookup(
        self, request: lookup_pb2.LookupRequest, context: grpc.aio.ServicerContext
    ) -> lookup_pb2.LookupResponse:
        """Fetch from the echo server and answer with its document."""
        fetched = await self._adapter.Fetch(
            adapter_pb2.FetchRequest(
                certificate_type=request.certificate_type,
                subject=request.subject,
                fields=request.fields,
                request_id=request.request_id or "baseline",
                purpose=request.purpose,
            ),
            timeout=5,
        )
        return lookup_pb2.LookupResponse(document=fetched.document, receipt=self._receipt)


async def serve(role: str, listen: str, upstream: str, canned: lookup_pb2.LookupResponse) -> None:
    """Serve until SIGTERM or SIGINT."""
    server = grpc.aio.server()
    if role == "echo":
        adapter_pb2_grpc.add_AdapterServiceServicer_to_server(Echo(canned), server)
    else:
        lookup_pb2_grpc.add_LookupServiceServicer_to_server(Forwarder(upstream, canned), server)
    port = server.add_insecure_port(listen)
    await server.start()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)
    print(f"baseline {role} listening on {listen.rpartition(':')[0]}:{port}", flush=True)
    await stop.wait()
    await server.stop(1)


def main(argv: list[str] | None = None) -> None:
    """Command line: echo | forward, --listen, --upstream, --response."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("role", choices=("echo", "forward"))
    parser.add_argument("--listen", required=True, help="127.0.0.1:PORT")
    parser.add_argument("--upstream", default="", help="the echo server (forward only)")
    parser.add_argument("--response", type=Path, required=True, help="a LookupResponse file")
    args = parser.parse_args(argv)
    if args.role == "forward" and not args.upstream:
        parser.error("forward needs --upstream")
    canned = lookup_pb2.LookupResponse.FromString(args.response.read_bytes())
    asyncio.run(serve(args.role, args.listen, args.upstream, canned))


if __name__ == "__main__":
    main()
