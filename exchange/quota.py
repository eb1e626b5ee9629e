"""Per-department lookup quotas: a token bucket for the rate, a counter for calls in flight.

The limits come from the registry (Department.quota) and are read on every call, so a change
takes effect on the next lookup. The state lives in this hub process: with N hub replicas
behind a load balancer a department gets up to N times its quota in total. That is the usual
trade for not putting a shared counter on every lookup's path; set the quota per replica.

A refused lookup gets RESOURCE_EXHAUSTED, the trailing metadata "retry-after-ms" (milliseconds,
for any client), and the standard google.rpc.Status details ("grpc-status-details-bin") with a
RetryInfo and a QuotaFailure, which gRPC clients in every language know how to read.
"""

from __future__ import annotations

import contextlib
import math
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import grpc
from google.protobuf import any_pb2, duration_pb2
from google.rpc import (  # type: ignore[import-untyped]  # ships .pyi, no py.typed
    code_pb2,
    error_details_pb2,
    status_pb2,
)

from exchange.errors import ExchangeError
from exchange.registry.model import Quota

RETRY_AFTER_METADATA_KEY = "retry-after-ms"
STATUS_DETAILS_METADATA_KEY = "grpc-status-details-bin"
# When calls in flight are what is exhausted, nobody knows when one will finish; a short
# pause spreads the retries out without leaving capacity idle for long.
CONCURRENCY_RETRY_SECONDS = 0.1

Metadata = tuple[tuple[str, str | bytes], ...]


class QuotaExceeded(ExchangeError):
    """RESOURCE_EXHAUSTED, with when to retry; `metadata` is the trailing metadata to send."""

    def __init__(self, message: str, retry_after: float, department: str) -> None:
        super().__init__(grpc.StatusCode.RESOURCE_EXHAUSTED, message)
        self.retry_after = retry_after
        self.metadata = retry_metadata(message, retry_after, department)


def retry_metadata(message: str, retry_after: float, department: str) -> Metadata:
    """Trailing metadata telling a client when to retry: plain and as google.rpc details."""
    milliseconds = max(1, math.ceil(retry_after * 1000))
    delay = duration_pb2.Duration()
    delay.FromMilliseconds(milliseconds)
    retry_info, quota_failure = any_pb2.Any(), any_pb2.Any()
    retry_info.Pack(error_details_pb2.RetryInfo(retry_delay=delay))
    quota_failure.Pack(
        error_details_pb2.QuotaFailure(
            violations=[
                error_details_pb2.QuotaFailure.Violation(
                    subject=f"department:{department}", description=message
                )
            ]
        )
    )
    status = status_pb2.Status(
        code=code_pb2.RESOURCE_EXHAUSTED, message=message, details=[retry_info, quota_failure]
    )
    return (
        (RETRY_AFTER_METADATA_KEY, str(milliseconds)),
        (STATUS_DETAILS_METADATA_KEY, status.SerializeToString()),
    )


@dataclass
class _Bucket:
    """One department's token bucket and in-flight count."""

    tokens: float
    refilled_at: float
    in_flight: int = 0
    quota: Quota = field(default_factory=Quota)


class Quotas:
    """Every department's quota state in this process. Not thread-safe: use from one event loop."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._buckets: dict[str, _Bucket] = {}

    @contextlib.contextmanager
    def admit(self, department: str, quota: Quota) -> Iterator[None]:
        """Hold one of `department`'s lookups for the block; QuotaExceeded when over its quota.

        A refused call takes nothing: it neither counts as in flight nor spends a token.
        """
        if not quota.limited:
            yield
            return
        bucket = self._bucket(department, quota)
        if quota.max_concurrent and bucket.in_flight >= quota.max_concurrent:
            raise QuotaExceeded(
                f"quota: {quota.max_concurrent} concurrent lookups for department "
                f"{department!r} exceeded",
                CONCURRENCY_RETRY_SECONDS,
                department,
            )
        if quota.requests_per_second:
            self._take_token(department, bucket, quota)
        bucket.in_flight += 1
        try:
            yield
        finally:
            bucket.in_flight -= 1

    def _bucket(self, department: str, quota: Quota) -> _Bucket:
        bucket = self._buckets.get(department)
        if bucket is None:
            bucket = self._buckets[department] = _Bucket(
                float(quota.burst), self._clock(), 0, quota
            )
        elif bucket.quota != quota:
            # The registry changed the quota: keep what was earned, within the new burst.
            bucket.tokens = min(bucket.tokens, float(quota.burst))
            bucket.quota = quota
        return bucket

    def _take_token(self, department: str, bucket: _Bucket, quota: Quota) -> None:
        now = self._clock()
        rate = quota.requests_per_second
        bucket.tokens = min(float(quota.burst), bucket.tokens + (now - bucket.refilled_at) * rate)
        bucket.refilled_at = now
        if bucket.tokens < 1.0:
            raise QuotaExceeded(
                f"quota: {rate} lookups/s for department {department!r} exceeded",
                (1.0 - bucket.tokens) / rate,
                department,
            )
        bucket.tokens -= 1.0
