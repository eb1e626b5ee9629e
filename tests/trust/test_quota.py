"""Department quotas: the rate (token bucket) and calls in flight, with retry information a gRPC
client in any language can read. The clock is a counter the test moves, so nothing here depends
on how fast the machine is.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator

import grpc
import grpc.aio
import pytest
from google.rpc import error_details_pb2  # type: ignore[import-untyped]
from grpc_status import rpc_status  # type: ignore[import-untyped]
from pki_fixture import TestPki

from exchange.errors import translate_errors
from exchange.quota import QuotaExceeded, Quotas
from exchange.registry import Quota
from exchange.tls import channel_credentials, server_credentials


class Clock:
    """Seconds that pass only when the test says so."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def admitted(quotas: Quotas, department: str, quota: Quota) -> bool:
    try:
        with quotas.admit(department, quota):
            return True
    except QuotaExceeded:
        return False


def test_a_burst_is_admitted_then_the_rate_applies() -> None:
    clock = Clock()
    quotas = Quotas(clock)
    quota = Quota(requests_per_second=2, burst=3)

    assert [admitted(quotas, "MCA", quota) for _ in range(4)] == [True, True, True, False]
    clock.now += 0.5  # one token back at 2/s
    assert [admitted(quotas, "MCA", quota) for _ in range(2)] == [True, False]
    clock.now += 10  # refills to the burst, no further
    assert [admitted(quotas, "MCA", quota) for _ in range(4)] == [True, True, True, False]


def test_a_refusal_says_the_limit_and_when_to_retry() -> None:
    clock = Clock()
    quotas = Quotas(clock)
    quota = Quota(requests_per_second=4, burst=1)
    assert admitted(quotas, "MCA", quota)
    clock.now += 0.1  # 0.4 of a token earned; 0.6 missing at 4/s = 150 ms

    with pytest.raises(QuotaExceeded) as refused, quotas.admit("MCA", quota):
        pass

    error = refused.value
    assert error.status is grpc.StatusCode.RESOURCE_EXHAUSTED
    assert error.message == "quota: 4 lookups/s for department 'MCA' exceeded"
    assert error.retry_after == pytest.approx(0.15)
    assert dict(error.metadata)["retry-after-ms"] == "150"


def test_departments_have_separate_buckets() -> None:
    quotas = Quotas(Clock())
    quota = Quota(requests_per_second=1, burst=1)
    assert admitted(quotas, "MCA", quota)
    assert not admitted(quotas, "MCA", quota)
    assert admitted(quotas, "HRSS", quota)


def test_calls_in_flight_are_limited_and_released() -> None:
    quotas = Quotas(Clock())
    quota = Quota(max_concurrent=2)
    with contextlib.ExitStack() as held:
        held.enter_context(quotas.admit("MCA", quota))
        held.enter_context(quotas.admit("MCA", quota))
        with pytest.raises(QuotaExceeded) as refused, quotas.admit("MCA", quota):
            pass
        assert refused.value.message == (
            "quota: 2 concurrent lookups for department 'MCA' exceeded"
        )
        assert admitted(quotas, "HRSS", quota)
    # Both finished (one way or another): room again.
    assert admitted(quotas, "MCA", quota)


def test_a_call_that_fails_still_frees_its_slot() -> None:
    quotas = Quotas(Clock())
    quota = Quota(max_concurrent=1)
    with pytest.raises(RuntimeError), quotas.admit("MCA", quota):
        raise RuntimeError("adapter down")
    assert admitted(quotas, "MCA", quota)


def test_a_refused_call_spends_nothing() -> None:
    clock = Clock()
    quotas = Quotas(clock)
    quota = Quota(requests_per_second=1, burst=1, max_concurrent=1)
    with quotas.admit("MCA", quota):
        # Refused for concurrency: must not have taken the next token either.
        assert not admitted(quotas, "MCA", quota)
    clock.now += 1
    assert admitted(quotas, "MCA", quota)


def test_no_quota_means_no_limit() -> None:
    quotas = Quotas(Clock())
    assert all(admitted(quotas, "MCA", Quota()) for _ in range(1000))


def test_a_lowered_quota_applies_on_the_next_call() -> None:
    clock = Clock()
    quotas = Quotas(clock)
    assert admitted(quotas, "MCA", Quota(requests_per_second=100, burst=100))
    lowered = Quota(requests_per_second=1, burst=2)
    assert [admitted(quotas, "MCA", lowered) for _ in range(3)] == [True, True, False]


# --- what a client sees over a real mutual-TLS channel -----------------------------------------

QUOTAS = Quotas(Clock())
LIMIT = Quota(requests_per_second=1, burst=1)


async def limited(request: bytes, context: grpc.aio.ServicerContext) -> bytes:
    async with translate_errors(context):
        with QUOTAS.admit("MCA", LIMIT):
            return b"ok"
    raise AssertionError("unreachable")


@pytest.fixture
async def limited_port(pki: TestPki) -> AsyncIterator[int]:
    server = grpc.aio.server()
    server.add_generic_rpc_handlers(
        [
            grpc.method_handlers_generic_handler(
                "test.Limited", {"Call": grpc.unary_unary_rpc_method_handler(limited)}
            )
        ]
    )
    port = server.add_secure_port(
        "127.0.0.1:0", server_credentials(pki.identity("hub", "hub", "EXCHANGE"))
    )
    await server.start()
    yield port
    await server.stop(None)


async def test_a_client_reads_retry_info_from_the_standard_status_details(
    pki: TestPki, limited_port: int
) -> None:
    credentials = channel_credentials(pki.identity("mca-case-system", "department", "MCA"))
    async with grpc.aio.secure_channel(f"127.0.0.1:{limited_port}", credentials) as channel:
        call = channel.unary_unary("/test.Limited/Call")
        assert await call(b"", timeout=10) == b"ok"
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await call(b"", timeout=10)

    error = refused.value
    assert error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert error.details() == "quota: 1 lookups/s for department 'MCA' exceeded"
    assert dict(error.trailing_metadata() or ())["retry-after-ms"] == "1000"
    status = rpc_status.from_call(error)
    assert status is not None
    retry, failure = error_details_pb2.RetryInfo(), error_details_pb2.QuotaFailure()
    assert status.details[0].Unpack(retry) and status.details[1].Unpack(failure)
    assert retry.retry_delay.ToMilliseconds() == 1000
    assert failure.violations[0].subject == "department:MCA"
