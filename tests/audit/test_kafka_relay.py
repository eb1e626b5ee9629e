"""The Kafka relay publishes every audit entry exactly once per key, through broker outages,
relay restarts and several relays on one database; appends never wait for Kafka.

Each test runs on SQLite and PostgreSQL with a real AuditLog and a real tansu broker. tansu
keeps its log in memory: `kafka_broker.stop()`/`.start()` is an outage after which the broker
is empty, so records are read back from one broker lifetime at a time; `.pause()`/`.resume()`
freezes the broker and keeps its log.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from kafka import KafkaConsumer, TopicPartition
from kafka_fixture import KafkaBroker

from audit.config import create_keys
from audit.events import AuditEvent, EventKind, Outcome, SubjectId
from audit.kafka_outbox import published_offset
from audit.kafka_relay import KafkaRelay
from audit.log import AuditLog
from audit.tables import audit_entries
from exchange.db import make_engine, upgrade
from exchange.v1 import audit_pb2

pytestmark = pytest.mark.kafka

TOPIC = "exchange.audit"
SUBJECT = SubjectId(kind="RESIDENT_ID", id="11010519491231002X")
DEADLINE_S = 60.0


@pytest.fixture
async def audit_log(database_url: str, tmp_path: Path) -> AsyncIterator[AuditLog]:
    engine = make_engine(database_url)
    upgrade(engine)
    log = AuditLog.open(engine, create_keys(tmp_path / "audit-keys"))
    await log.start()
    yield log
    await log.close()
    engine.dispose()


def relay_for(log: AuditLog, broker: KafkaBroker, **options: Any) -> KafkaRelay:
    """A relay that polls and retries at test pace."""
    options.setdefault("batch_size", 100)
    return KafkaRelay(
        log.engine,
        broker.bootstrap,
        TOPIC,
        poll_interval_s=0.05,
        backoff_initial_s=0.1,
        backoff_max_s=1.0,
        lock_retry_s=0.2,
        **options,
    )


def lookup(n: int) -> AuditEvent:
    return AuditEvent(
        event=EventKind.LOOKUP,
        outcome=Outcome.GRANTED,
        status="OK",
        method="/exchange.v1.LookupService/Lookup",
        caller="civil-affairs-counter",
        requester_department="CIVIL_AFFAIRS",
        role="department",
        subject=SUBJECT,
        certificate_type="MARRIAGE_CERT",
        issuer="PUBLIC_SECURITY",
        fields_released=("name", "registered_on"),
        purpose="marriage-registration",
        request_id=f"req-{n}",
    )


async def append_burst(log: AuditLog, count: int) -> dict[int, bytes]:
    """Append `count` entries at once; {index: leaf hash} from their receipts. The bound
    only catches an append that waits for Kafka (it never should)."""
    receipts = await asyncio.wait_for(
        asyncio.gather(*(log.append(lookup(n)) for n in range(count))), timeout=DEADLINE_S
    )
    return {receipt.entry_index: receipt.leaf_hash for receipt in receipts}


async def wait_until(condition: Callable[[], bool], what: str) -> None:
    deadline = time.monotonic() + DEADLINE_S
    while not condition():
        if time.monotonic() > deadline:
            pytest.fail(f"gave up waiting for {what}")
        await asyncio.sleep(0.05)


def read_topic(bootstrap: str) -> list[Any]:
    """Every record the broker holds on TOPIC, read to the end of each partition."""
    consumer = KafkaConsumer(
        bootstrap_servers=bootstrap, enable_auto_commit=False, auto_offset_reset="earliest"
    )
    deadline = time.monotonic() + DEADLINE_S
    try:
        while not (partitions := consumer.partitions_for_topic(TOPIC)):
            assert time.monotonic() < deadline, f"topic {TOPIC} never appeared"
            consumer.topics()  # refreshes metadata
        assigned = [TopicPartition(TOPIC, p) for p in sorted(partitions)]
        consumer.assign(assigned)
        consumer.seek_to_beginning(*assigned)
        ends = consumer.end_offsets(assigned)
        records: list[Any] = []
        while any(consumer.position(tp) < ends[tp] for tp in assigned):
            assert time.monotonic() < deadline, "could not read the topic to its end"
            for batch in consumer.poll(timeout_ms=200).values():
                records.extend(batch)
        return records
    finally:
        consumer.close()


def assert_published_once(records: list[Any], expected: dict[int, bytes]) -> None:
    """Every expected entry is on the topic exactly once, in index order per partition, as
    an AuditEntry whose leaf hash is the log's and which never names the subject in clear."""
    indexes = sorted(int(record.key) for record in records)
    assert indexes == sorted(expected), "entries missing or published twice"
    by_partition: dict[int, list[int]] = {}
    for record in records:
        entry = audit_pb2.AuditEntry.FromString(record.value)
        assert entry.index == int(record.key)
        assert entry.leaf_hash == expected[entry.index]
        assert entry.outcome == audit_pb2.GRANTED and entry.certificate_type == "MARRIAGE_CERT"
        assert list(entry.fields_released) == ["name", "registered_on"]
        assert entry.request_id.startswith("req-") and entry.subject_ref
        assert json.loads(entry.leaf_data)["request_id"] == entry.request_id
        assert not entry.HasField("subject")
        assert SUBJECT.id.encode() not in record.value
        by_partition.setdefault(record.partition, []).append(entry.index)
    for partition, order in by_partition.items():
        assert order == sorted(order), f"partition {partition} is out of index order"


async def test_entries_published_exactly_once_through_a_broker_outage(
    audit_log: AuditLog, kafka_broker: KafkaBroker
) -> None:
    relay = relay_for(audit_log, kafka_broker)
    await relay.start()
    try:
        before = await append_burst(audit_log, 150)
        await wait_until(lambda: relay.status.next_index == 150, "the first burst to publish")
        assert_published_once(await asyncio.to_thread(read_topic, kafka_broker.bootstrap), before)

        kafka_broker.stop()
        during = await append_burst(audit_log, 100)  # appends do not wait for Kafka
        assert set(during) == set(range(150, 250))
        assert published_offset(audit_log.engine, TOPIC) == 150  # nothing acknowledged

        kafka_broker.start()  # back, and empty: tansu keeps its log in memory
        after = await append_burst(audit_log, 50)
        await wait_until(lambda: relay.status.next_index == 300, "the backlog to publish")
        records = await asyncio.to_thread(read_topic, kafka_broker.bootstrap)
        assert_published_once(records, during | after)
        assert published_offset(audit_log.engine, TOPIC) == 300
    finally:
        await relay.stop()


async def test_frozen_broker_mid_burst_gets_each_entry_once(
    audit_log: AuditLog, kafka_broker: KafkaBroker
) -> None:
    # Requests time out while the broker is frozen and the producer retries them; the broker
    # may still write the first copies when it thaws. The idempotent producer's sequence
    # numbers let the broker drop the retried copies.
    relay = relay_for(
        audit_log, kafka_broker, batch_size=50, producer_config={"request_timeout_ms": 1000}
    )
    entries = await append_burst(audit_log, 2000)
    await relay.start()
    try:
        await wait_until(lambda: (relay.status.next_index or 0) >= 100, "publishing to begin")
        kafka_broker.pause()
        entries |= await append_burst(audit_log, 100)
        await asyncio.sleep(3)  # keep the outage longer than the request timeout
        kafka_broker.resume()
        await wait_until(lambda: relay.status.next_index == 2100, "everything to publish")
        records = await asyncio.to_thread(read_topic, kafka_broker.bootstrap)
        assert_published_once(records, entries)
    finally:
        kafka_broker.resume()
        await relay.stop()


async def test_restarted_relay_resumes_without_resending(
    audit_log: AuditLog, kafka_broker: KafkaBroker
) -> None:
    entries = await append_burst(audit_log, 1000)
    first = relay_for(audit_log, kafka_broker, batch_size=50)
    await first.start()
    await wait_until(lambda: (first.status.next_index or 0) >= 100, "publishing to begin")
    await first.stop()  # part-way through the backlog
    stopped_at = published_offset(audit_log.engine, TOPIC)
    published = await asyncio.to_thread(read_topic, kafka_broker.bootstrap)
    assert sorted(int(record.key) for record in published) == list(range(stopped_at))

    entries |= await append_burst(audit_log, 200)
    second = relay_for(audit_log, kafka_broker, batch_size=50)
    await second.start()
    try:
        await wait_until(lambda: second.status.next_index == 1200, "the rest to publish")
        assert second.status.published == 1200 - stopped_at
        records = await asyncio.to_thread(read_topic, kafka_broker.bootstrap)
        assert_published_once(records, entries)
    finally:
        await second.stop()


async def test_one_relay_publishes_and_another_takes_over(
    audit_log: AuditLog, kafka_broker: KafkaBroker
) -> None:
    # Two hub replicas on one database: one relay holds the lock, the other waits for it.
    leader = relay_for(audit_log, kafka_broker)
    standby = relay_for(audit_log, kafka_broker)
    await leader.start()
    await wait_until(lambda: leader.status.leader, "the first relay to lead")
    await standby.start()
    try:
        entries = await append_burst(audit_log, 300)
        await wait_until(lambda: leader.status.next_index == 300, "the leader to publish")
        assert standby.status.published == 0 and not standby.status.leader

        await leader.stop()
        entries |= await append_burst(audit_log, 100)
        await wait_until(lambda: standby.status.next_index == 400, "the standby to take over")
        assert standby.status.published == 100
        records = await asyncio.to_thread(read_topic, kafka_broker.bootstrap)
        assert_published_once(records, entries)
    finally:
        await leader.stop()
        await standby.stop()


async def test_relay_started_before_the_broker_catches_up(
    audit_log: AuditLog, kafka_broker: KafkaBroker
) -> None:
    kafka_broker.stop()
    relay = relay_for(audit_log, kafka_broker)
    await relay.start()  # returns although no broker answers
    try:
        entries = await append_burst(audit_log, 100)
        await wait_until(lambda: relay.status.last_error != "", "the relay to report the outage")
        assert published_offset(audit_log.engine, TOPIC) == 0
        kafka_broker.start()
        await wait_until(lambda: relay.status.next_index == 100, "the backlog to publish")
        assert relay.status.last_error == ""
        records = await asyncio.to_thread(read_topic, kafka_broker.bootstrap)
        assert_published_once(records, entries)
    finally:
        await relay.stop()


async def test_entry_whose_leaf_cannot_be_encoded_is_skipped(
    audit_log: AuditLog, kafka_broker: KafkaBroker, caplog: pytest.LogCaptureFixture
) -> None:
    # Leaves edited by hand (the log's verification names them): 12 is no JSON any more, in
    # the middle of a batch; 29, the last entry, is a copy of 28's leaf and so names index 28.
    # Neither can be published under its key; the relay logs them and moves on.
    entries = await append_burst(audit_log, 30)
    with audit_log.engine.begin() as conn:
        leaf_28 = conn.execute(sa.select(audit_entries.c.leaf).where(audit_entries.c.idx == 28))
        copied = bytes(leaf_28.scalar_one())
        for index, leaf in ((12, b"garbage"), (29, copied)):
            conn.execute(
                audit_entries.update().where(audit_entries.c.idx == index).values(leaf=leaf)
            )
    del entries[12], entries[29]
    relay = relay_for(audit_log, kafka_broker, batch_size=10)
    with caplog.at_level(logging.ERROR, logger="audit.kafka_relay"):
        await relay.start()
        try:
            await wait_until(lambda: relay.status.next_index == 30, "the relay to pass 12 and 29")
            entries |= await append_burst(audit_log, 10)  # and it goes on publishing after them
            await wait_until(lambda: relay.status.next_index == 40, "the entries after them")
        finally:
            await relay.stop()
    records = await asyncio.to_thread(read_topic, kafka_broker.bootstrap)
    assert_published_once(records, entries)
    assert published_offset(audit_log.engine, TOPIC) == 40
    assert (relay.status.published, relay.status.skipped) == (38, 2)
    logged = [r.getMessage() for r in caplog.records if r.levelno == logging.ERROR]
    assert any("entry 12" in message for message in logged), logged
    assert any("entry 29" in message and "index 28" in message for message in logged), logged
