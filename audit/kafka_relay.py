"""The Kafka relay: publishes every audit entry to a topic, exactly once per key.

The log's entries table is the outbox (see audit.kafka_outbox), so appends never wait
for Kafka. This relay runs in a thread of its own (kafka-python blocks) and repeats:
read the next unpublished rows in index order, send each as a protobuf `exchange.v1.AuditEntry`
keyed by its index, wait for the broker's acknowledgements, then move its offset in the
database past what was acknowledged. A relay that stops or dies resumes from that offset.

The producer is idempotent (acks=all, at most 5 requests in flight), so its own retries
after a lost acknowledgement do not write a record twice; the relay resends only records
that were never acknowledged. When the broker is unreachable the relay keeps the rows, backs
off (capped) and retries forever; nothing is raised into the hub. After a failure the
producer is replaced: a broker that lost its state (a restart of an in-memory broker, an
expired producer id) can leave kafka-python's producer in a fatal state.

What stays at-least-once: if the process dies after the broker acknowledged a batch and
before the offset was written, the next relay sends that batch again.

An entry whose leaf cannot be made into a message (edited by hand: no JSON, or naming
another index) is logged as an error and skipped, as `kafka_outbox.contiguous` skips
entries deleted by hand: the relay moves its offset past it and publishes the entries after
it. Its index is missing from the topic, and the log's verification names the entry.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import random
import threading
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa
from kafka import KafkaProducer
from kafka.errors import KafkaTimeoutError

from audit import kafka_outbox
from audit.kafka_message import encode
from audit.kafka_outbox import Leadership, OutboxRow

log = logging.getLogger(__name__)

STOP_GRACE_S = 5.0  # how long stop() lets acknowledgements already on their way arrive
_JOIN_TIMEOUT_S = 30.0


@dataclass(frozen=True, slots=True)
class RelayStatus:
    """What a relay has done, for health checks and logs."""

    next_index: int | None  # next entry to publish; None until this relay has led
    leader: bool  # this relay holds the lock and publishes
    published: int  # entries this relay had acknowledged since start()
    last_error: str  # why the last round failed; "" after a successful one
    skipped: int = 0  # entries passed over since start(): their leaf cannot be published


# What encode() raises for a leaf it cannot make into a message (no JSON or not an entry
# object, another index, a field of the wrong type or out of range, absurd nesting).
_UNPUBLISHABLE = (ValueError, TypeError, OverflowError, RecursionError)


class RelayFailed(Exception):
    """A round could not publish everything it sent; the rows stay for the next round."""


def producer_settings(
    bootstrap_servers: str, idempotence: bool, overrides: Mapping[str, Any] | None = None
) -> dict[str, Any]:
    """KafkaProducer keyword arguments of the relay; `overrides` win.

    The timeouts are short so that an outage turns into a failed round (and a fresh
    producer) in seconds rather than kafka-python's default minutes.
    """
    settings: dict[str, Any] = {
        "bootstrap_servers": [s.strip() for s in bootstrap_servers.split(",") if s.strip()],
        "client_id": "exchange-audit-relay",
        "acks": "all",
        "enable_idempotence": idempotence,
        # Idempotence keeps order with up to 5 requests in flight; without it only 1 does.
        "max_in_flight_requests_per_connection": 5 if idempotence else 1,
        "linger_ms": 5,
        # An entry is about 1 KiB: fill requests by the hundred, not by the 16 (the default).
        "batch_size": 256 * 1024,
        "request_timeout_ms": 10_000,
        "delivery_timeout_ms": 30_000,
        "max_block_ms": 5_000,
        "bootstrap_timeout_ms": 5_000,
        "reconnect_backoff_max_ms": 2_000,
    }
    settings.update(overrides or {})
    return settings


class KafkaRelay:
    """Publishes the audit log of `engine` to `topic` on the brokers `bootstrap_servers`."""

    def __init__(
        self,
        engine: sa.Engine,
        bootstrap_servers: str,
        topic: str,
        *,
        batch_size: int = 500,
        poll_interval_s: float = 0.5,
        backoff_initial_s: float = 0.5,
        backoff_max_s: float = 30.0,
        lock_retry_s: float = 5.0,
        idempotence: bool = True,
        producer_config: Mapping[str, Any] | None = None,
    ) -> None:
        if not topic:
            raise ValueError("kafka.topic: a topic name is required")
        if not bootstrap_servers.strip(", "):
            raise ValueError('kafka.bootstrap_servers: expected "host:port[,host:port...]"')
        if batch_size < 1:
            raise ValueError("kafka relay batch_size must be at least 1")
        self.topic = topic
        self._engine = engine
        self._relay = kafka_outbox.relay_name(topic)
        self._batch_size = batch_size
        self._poll_interval_s = poll_interval_s
        self._backoff_initial_s = backoff_initial_s
        self._backoff_max_s = backoff_max_s
        self._lock_retry_s = lock_retry_s
        self._settings = producer_settings(bootstrap_servers, idempotence, producer_config)
        self._leadership = Leadership(engine)
        self._producer: KafkaProducer | None = None
        self._offset: int | None = None  # cached while leading; re-read after any failure
        # At or beyond the offset: acknowledged by the broker, or skipped as unpublishable
        # (those are also in _skipped); both are done, neither is sent again.
        self._settled: set[int] = set()
        self._skipped: set[int] = set()
        self._failures = 0
        self._stopping = threading.Event()
        self._wake = threading.Event()
        self._thread: threading.Thread | None = None
        self._status = RelayStatus(next_index=None, leader=False, published=0, last_error="")

    @property
    def status(self) -> RelayStatus:
        """A snapshot of what the relay has done so far."""
        return self._status

    async def start(self) -> None:
        """Start publishing in a background thread; returns at once, even if Kafka is down."""
        if self._thread is not None:
            raise RuntimeError("kafka relay already started")
        self._thread = threading.Thread(target=self._run, name=f"kafka-relay-{self.topic}")
        self._thread.daemon = True
        self._thread.start()

    async def stop(self) -> None:
        """Stop publishing: acknowledgements on their way get STOP_GRACE_S to arrive and be
        recorded, then the producer and the relay lock are released."""
        thread = self._thread
        if thread is None:
            return
        self._stopping.set()
        self._wake.set()
        await asyncio.to_thread(thread.join, _JOIN_TIMEOUT_S)
        if thread.is_alive():
            log.error("kafka relay thread did not stop within %.0f s", _JOIN_TIMEOUT_S)

    def wake(self) -> None:
        """Look for new entries now instead of at the next poll (e.g. right after an append)."""
        self._wake.set()

    # --- the relay thread ------------------------------------------------------------------

    def _run(self) -> None:
        try:
            while not self._stopping.is_set():
                delay = self._round()
                if delay > 0:
                    self._wake.wait(delay)
                    self._wake.clear()
        finally:
            self._close_producer(timeout_s=0)
            try:
                self._leadership.release()
            except Exception:
                log.exception("kafka relay could not release its lock")

    def _round(self) -> float:
        """Publish one batch if there is one; return how long to wait before the next round."""
        try:
            if not self._leadership.acquire():
                self._offset = None
                self._update(leader=False)
                return self._lock_retry_s
            if self._offset is None:
                self._offset = kafka_outbox.start_offset(self._engine, self._relay)
                # Acknowledged records past the offset are still acknowledged (resending
                # them would write them twice), and skipped entries are still unpublishable.
                self._settled = {index for index in self._settled if index >= self._offset}
                self._skipped = {index for index in self._skipped if index >= self._offset}
            start = self._offset
            rows = kafka_outbox.contiguous(
                kafka_outbox.unpublished(self._engine, start, self._batch_size), start
            )
            self._update(leader=True, next_index=start)
            if not rows:
                return self._poll_interval_s
            self._publish(start, rows)
        except Exception as exc:  # the relay must outlive any failure: back off, retry
            return self._failed(exc)
        self._failures = 0
        self._update(last_error="")
        return 0.0

    def _publish(self, start: int, rows: list[OutboxRow]) -> None:
        producer = self._producer or self._connect()
        futures: dict[int, Any] = {}
        send_error: Exception | None = None
        for row in rows:
            if row.index in self._settled:
                continue
            try:
                key, value = encode(row.index, row.leaf)
            except _UNPUBLISHABLE as exc:
                self._skip(row.index, exc)
                continue
            try:
                futures[row.index] = producer.send(self.topic, key=key, value=value)
            except Exception as exc:  # metadata unavailable, producer closed or fatal
                send_error = exc
                break
        self._await_acks(producer)
        failures = [f.exception for f in futures.values() if not f.succeeded()]
        self._settled.update(index for index, f in futures.items() if f.succeeded())
        self._record_progress(start, rows)
        if send_error is not None or failures:
            cause = send_error or failures[0]
            raise RelayFailed(f"{len(failures)} of {len(futures)} sends failed: {cause!r}")

    def _skip(self, index: int, exc: Exception) -> None:
        """Pass over an entry that cannot be published, as `contiguous` passes over a gap."""
        log.error(
            "kafka relay to %s: skipping audit entry %d, its leaf cannot be published"
            " (edited by hand? the log's verification names it): %s: %s",
            self.topic,
            index,
            type(exc).__name__,
            exc,
        )
        self._settled.add(index)
        self._skipped.add(index)

    def _await_acks(self, producer: KafkaProducer) -> None:
        """Wait for every record sent to be acknowledged or failed (delivery_timeout_ms bounds
        it); once stop() was called, wait at most STOP_GRACE_S more."""
        waited_since_stop = 0.0
        while True:
            try:
                producer.flush(timeout=0.5)
                return
            except KafkaTimeoutError:  # not all acknowledged yet
                if self._stopping.is_set():
                    waited_since_stop += 0.5
                    if waited_since_stop >= STOP_GRACE_S:
                        self._close_producer(timeout_s=0)
                        return

    def _record_progress(self, start: int, rows: list[OutboxRow]) -> None:
        """Move the offset past the settled rows that follow it without a gap."""
        new = start
        for row in rows:
            if row.index not in self._settled:
                break
            new = row.index + 1
        if new == start:
            return
        if not kafka_outbox.advance(self._engine, self._relay, start, new):
            self._offset = None
            self._settled.clear()
            self._skipped.clear()
            raise RelayFailed(f"relay offset of {self._relay} was moved by someone else")
        self._offset = new
        self._settled = {index for index in self._settled if index >= new}
        skipped = 0
        if self._skipped:
            skipped = sum(1 for index in self._skipped if index < new)
            self._skipped = {index for index in self._skipped if index >= new}
        self._update(
            next_index=new,
            published=self._status.published + (new - start - skipped),
            skipped=self._status.skipped + skipped,
        )

    def _connect(self) -> KafkaProducer:
        self._producer = KafkaProducer(**self._settings)
        return self._producer

    def _close_producer(self, timeout_s: float) -> None:
        producer, self._producer = self._producer, None
        if producer is None:
            return
        try:
            producer.close(timeout=timeout_s)
            return
        except KafkaTimeoutError:
            # kafka-python's close() flushes first and gives up before it force-closes when
            # records are still pending: abandon them (their futures fail), then close.
            sender = getattr(producer, "_sender", None)
            if sender is not None:
                sender.force_close()
                sender.join(_JOIN_TIMEOUT_S)
        except Exception:
            log.debug("closing the kafka producer failed", exc_info=True)
            return
        try:
            producer.close(timeout=0)
        except Exception:
            log.debug("closing the kafka producer failed", exc_info=True)

    def _failed(self, exc: Exception) -> float:
        self._failures += 1
        self._close_producer(timeout_s=0)
        self._offset = None  # re-read: the database may have been the one failing
        self._update(last_error=str(exc))
        if self._stopping.is_set():
            log.info("kafka relay to %s stopped before all was acknowledged: %s", self.topic, exc)
            return 0.0
        delay = min(self._backoff_max_s, self._backoff_initial_s * 2.0 ** (self._failures - 1))
        delay *= random.uniform(0.8, 1.0)  # replicas should not retry in lock-step
        log.warning(
            "kafka relay to %s: %s; retrying in %.1f s (attempt %d)",
            self.topic,
            exc,
            delay,
            self._failures,
        )
        return delay

    def _update(self, **changes: Any) -> None:
        self._status = dataclasses.replace(self._status, **changes)
