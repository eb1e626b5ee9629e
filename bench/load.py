"""The load generator: N concurrent workers on one grpc.aio channel, calling Lookup in a loop.

Every run is bounded, by a number of calls or by seconds (whichever is given), and starts
with a warm-up whose calls are not counted. Latency is measured per call around the await.
"""

from __future__ import annotations

import asyncio
import itertools
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field

import grpc
import grpc.aio

from exchange.v1 import lookup_pb2, lookup_pb2_grpc

Call = Callable[[lookup_pb2.LookupRequest], Awaitable[lookup_pb2.LookupResponse]]
CALL_TIMEOUT_S = 30.0


@dataclass
class RunResult:
    """What one run measured."""

    concurrency: int
    seconds: float
    latencies: list[float] = field(repr=False)  # seconds, one per successful call
    errors: int = 0
    first_error: str = ""

    def __add__(self, other: RunResult) -> RunResult:
        """Two runs at one concurrency as one."""
        return RunResult(
            self.concurrency,
            self.seconds + other.seconds,
            self.latencies + other.latencies,
            self.errors + other.errors,
            self.first_error or other.first_error,
        )

    @property
    def calls(self) -> int:
        """Successful calls."""
        return len(self.latencies)

    @property
    def per_second(self) -> float:
        """Successful calls per second."""
        return self.calls / self.seconds if self.seconds else 0.0

    def percentile_ms(self, fraction: float) -> float:
        """The latency below which `fraction` of the calls finished, in milliseconds."""
        if not self.latencies:
            return float("nan")
        ordered = sorted(self.latencies)
        return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))] * 1000


def lookup_call(channel: grpc.aio.Channel) -> Call:
    """A function calling LookupService.Lookup on `channel`."""
    stub = lookup_pb2_grpc.LookupServiceStub(channel)

    async def call(request: lookup_pb2.LookupRequest) -> lookup_pb2.LookupResponse:
        response: lookup_pb2.LookupResponse = await stub.Lookup(request, timeout=CALL_TIMEOUT_S)
        return response

    return call


async def run(
    call: Call,
    requests: Sequence[lookup_pb2.LookupRequest],
    concurrency: int,
    *,
    seconds: float | None = None,
    calls: int | None = None,
    warmup_seconds: float = 1.0,
) -> RunResult:
    """Drive `call` with `concurrency` workers after a warm-up; bounded by `seconds` or `calls`.

    At least one bound is required; with both, whichever is reached first ends the run.
    """
    if seconds is None and calls is None:
        raise ValueError("a run needs a number of calls or of seconds")
    if warmup_seconds > 0:
        await _drive(call, requests, concurrency, warmup_seconds, None)
    return await _drive(call, requests, concurrency, seconds, calls)


async def _drive(
    call: Call,
    requests: Sequence[lookup_pb2.LookupRequest],
    concurrency: int,
    seconds: float | None,
    calls: int | None,
) -> RunResult:
    numbers = itertools.count()
    started = time.perf_counter()
    ends = started + seconds if seconds is not None else float("inf")
    result = RunResult(concurrency, 0.0, [])

    async def worker() -> None:
        latencies = result.latencies
        while True:
            number = next(numbers)
            if (calls is not None and number >= calls) or time.perf_counter() >= ends:
                return
            request = requests[number % len(requests)]
            began = time.perf_counter()
            try:
                await call(request)
            except grpc.aio.AioRpcError as error:
                result.errors += 1
                result.first_error = result.first_error or f"{error.code().name}: {error.details()}"
                continue
            latencies.append(time.perf_counter() - began)

    await asyncio.gather(*(worker() for _ in range(concurrency)))
    result.seconds = time.perf_counter() - started
    return result
