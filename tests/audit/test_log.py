"""Appending: group commit, gapless indexes across writers, receipts, checkpoints and proofs."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import datetime as dt
import itertools
import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import grpc
import pytest
import rfc6962
import sqlalchemy as sa
from audit_world import inserts_refused, lookup_event
from registry.registry_catalogue import psb
from registry.test_registry_store import version_of

from audit import entry, store
from audit.config import AuditConfig
from audit.events import AuditEvent, EventKind, Outcome
from audit.kafka_outbox import unpublished
from audit.keys import LogKeys
from audit.log import AuditLog
from audit.signing import SignatureError, verify_checkpoint, verify_receipt
from audit.tables import audit_entries
from exchange.db import make_engine, upgrade
from exchange.errors import ExchangeError
from exchange.pki import load_public_key_raw
from exchange.registry import Department, RegistryStore, to_json
from exchange.v1 import audit_pb2, lookup_pb2


def stored_leaves(engine: sa.Engine) -> list[tuple[int, bytes]]:
    with engine.connect() as conn:
        rows = conn.execute(
            sa.select(audit_entries.c.idx, audit_entries.c.leaf).order_by(audit_entries.c.idx)
        )
        return [(int(idx), bytes(leaf)) for idx, leaf in rows]


async def test_concurrent_appends_share_commits_and_get_gapless_indexes(
    audit_log: AuditLog, engine: sa.Engine, audit_config: AuditConfig
) -> None:
    receipts = await asyncio.gather(*(audit_log.append(lookup_event(i)) for i in range(500)))

    assert sorted(r.entry_index for r in receipts) == list(range(500))
    assert [idx for idx, _ in stored_leaves(engine)] == list(range(500))
    assert audit_log.batches_committed < 500
    public_key = load_public_key_raw(audit_config.public_key)
    for receipt in receipts:
        promise = verify_receipt(receipt, public_key)
        assert promise.batch_start <= receipt.entry_index < promise.batch_start + promise.batch_size
        assert promise.log_id == audit_log.log_id
    # A Kafka relay, even one added only now, finds every entry to publish, in index order.
    pending = unpublished(engine, 0, 1000)
    assert [row.index for row in pending] == list(range(500))
    assert [row.leaf for row in pending] == [leaf for _, leaf in stored_leaves(engine)]


async def test_one_signature_per_batch_proves_each_entry_with_rfc_6962(
    audit_log: AuditLog, engine: sa.Engine
) -> None:
    receipts = await asyncio.gather(*(audit_log.append(lookup_event(i)) for i in range(300)))
    leaves = [rfc6962.leaf(leaf) for _, leaf in stored_leaves(engine)]

    promises = {r.promise for r in receipts}
    assert len(promises) == audit_log.batches_committed < 300  # signed per commit, not entry
    covered = []
    for receipt in receipts:
        promise = lookup_pb2.InclusionPromise.FromString(receipt.promise)
        start, size = promise.batch_start, promise.batch_size
        assert promise.batch_root == rfc6962.mth(leaves[start : start + size])
        assert receipt.leaf_hash == leaves[receipt.entry_index]
        position = receipt.entry_index - start
        assert list(receipt.batch_path) == rfc6962.path(position, leaves[start : start + size])
        covered.append((start, size))
    batches = sorted(set(covered))
    assert [start for start, _ in batches] == [0, *itertools.accumulate(s for _, s in batches)][:-1]


async def test_a_receipt_with_an_altered_path_leaf_or_index_does_not_verify(
    audit_log: AuditLog, audit_config: AuditConfig
) -> None:
    public_key = load_public_key_raw(audit_config.public_key)
    receipts = await asyncio.gather(*(audit_log.append(lookup_event(i)) for i in range(40)))
    receipt = max(receipts, key=lambda r: len(r.batch_path))
    assert receipt.batch_path, "40 concurrent appends share a commit"
    promise = verify_receipt(receipt, public_key)
    position = receipt.entry_index - promise.batch_start

    def rfc_root(altered: lookup_pb2.Receipt) -> bytes:
        return rfc6962.inclusion_root(
            altered.entry_index - promise.batch_start,
            promise.batch_size,
            altered.leaf_hash,
            list(altered.batch_path),
        )

    assert rfc_root(receipt) == promise.batch_root
    path = lookup_pb2.Receipt()
    path.CopyFrom(receipt)
    path.batch_path[0] = bytes(32)
    leaf = lookup_pb2.Receipt()
    leaf.CopyFrom(receipt)
    leaf.leaf_hash = rfc6962.leaf(b"an entry that was never appended")
    for altered in (path, leaf):
        assert rfc_root(altered) != promise.batch_root
        with pytest.raises(SignatureError, match="batch_path does not prove"):
            verify_receipt(altered, public_key)

    outside = lookup_pb2.Receipt()
    outside.CopyFrom(receipt)
    outside.entry_index = promise.batch_start + promise.batch_size
    with pytest.raises(SignatureError, match="not in the signed batch"):
        verify_receipt(outside, public_key)
    moved = lookup_pb2.Receipt()
    moved.CopyFrom(receipt)
    moved.entry_index = promise.batch_start + (position + 1) % promise.batch_size
    assert rfc_root(moved) != promise.batch_root
    with pytest.raises(SignatureError):
        verify_receipt(moved, public_key)
    forged = lookup_pb2.Receipt()
    forged.CopyFrom(receipt)
    forged.promise = lookup_pb2.InclusionPromise(
        log_id=promise.log_id, batch_start=0, batch_size=1, batch_root=receipt.leaf_hash
    ).SerializeToString()
    forged.ClearField("batch_path")
    with pytest.raises(SignatureError, match="signature does not verify"):
        verify_receipt(forged, public_key)


async def test_receipt_commits_to_the_stored_entry(audit_log: AuditLog, engine: sa.Engine) -> None:
    receipt = await audit_log.append(lookup_event(7, purpose="social_assistance"))
    index, leaf = stored_leaves(engine)[receipt.entry_index]
    entry = json.loads(leaf)

    assert rfc6962.leaf(leaf) == receipt.leaf_hash
    assert entry["index"] == index == receipt.entry_index
    assert entry["purpose"] == "social_assistance"
    assert entry["fields_released"] == ["birth_date", "name"]
    assert entry["time"].endswith("Z") and len(entry["time"]) == 27
    assert (
        leaf
        == json.dumps(entry, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()
    )


async def test_a_receipt_promises_a_time_no_earlier_than_its_entry(
    audit_log: AuditLog, engine: sa.Engine
) -> None:
    # The batch is signed while its commit runs; the promise's time must still follow the
    # time written into each entry it covers.
    receipts = await asyncio.gather(*(audit_log.append(lookup_event(n)) for n in range(20)))

    leaves = dict(stored_leaves(engine))
    for receipt in receipts:
        promise = lookup_pb2.InclusionPromise.FromString(receipt.promise)
        made = entry.parse_time(json.loads(leaves[receipt.entry_index])["time"])
        assert promise.appended_at.ToDatetime(dt.UTC) >= made


async def test_an_append_whose_batch_cannot_be_signed_is_unavailable(
    audit_log: AuditLog, monkeypatch: pytest.MonkeyPatch
) -> None:
    def broken(*args: Any) -> list[lookup_pb2.Receipt]:
        raise RuntimeError("signing key unreadable")

    monkeypatch.setattr("audit.log.sign_batch", broken)

    with pytest.raises(ExchangeError) as caught:
        await audit_log.append(lookup_event(1))
    assert caught.value.status == grpc.StatusCode.UNAVAILABLE
    assert caught.value.message == "audit log could not sign a receipt"


async def test_checkpoints_and_proofs_check_out_with_rfc_6962(
    audit_log: AuditLog, engine: sa.Engine, audit_config: AuditConfig
) -> None:
    public_key = load_public_key_raw(audit_config.public_key)
    await asyncio.gather(*(audit_log.append(lookup_event(i)) for i in range(300)))
    first = verify_checkpoint(await audit_log.checkpoint(fresh=True), public_key)
    await asyncio.gather(*(audit_log.append(lookup_event(i)) for i in range(400)))
    second = verify_checkpoint(await audit_log.checkpoint(fresh=True), public_key)
    leaves = [rfc6962.leaf(leaf) for _, leaf in stored_leaves(engine)]

    assert (first.tree_size, second.tree_size) == (300, 700)
    assert first.root_hash == rfc6962.mth(leaves[:300])
    assert second.root_hash == rfc6962.mth(leaves)
    for index in (0, 1, 255, 256, 299, 511, 512, 699):
        proof = await asyncio.to_thread(audit_log.reader.inclusion_proof, index, 0)
        assert proof.tree_size == 700 and proof.leaf_hash == leaves[index]
        assert rfc6962.inclusion_root(index, 700, leaves[index], proof.hashes) == second.root_hash
    proof = await asyncio.to_thread(audit_log.reader.inclusion_proof, 17, 300)
    assert rfc6962.inclusion_root(17, 300, leaves[17], proof.hashes) == first.root_hash
    consistency = await asyncio.to_thread(audit_log.reader.consistency_proof, 300, 700)
    assert rfc6962.consistency_roots(300, 700, first.root_hash, consistency.hashes) == (
        first.root_hash,
        second.root_hash,
    )
    # Sizes no checkpoint was signed at are provable too, as long as one covers them.
    consistency = await asyncio.to_thread(audit_log.reader.consistency_proof, 257, 513)
    assert list(consistency.hashes) == rfc6962.proof(257, leaves[:513])


async def test_proofs_beyond_the_signed_tree_are_out_of_range(audit_log: AuditLog) -> None:
    await asyncio.gather(*(audit_log.append(lookup_event(i)) for i in range(10)))
    await audit_log.checkpoint(fresh=True)
    await audit_log.append(lookup_event(10))

    with pytest.raises(ExchangeError) as beyond:
        await asyncio.to_thread(audit_log.reader.inclusion_proof, 10, 0)
    assert beyond.value.status == grpc.StatusCode.OUT_OF_RANGE
    with pytest.raises(ExchangeError) as inconsistent:
        await asyncio.to_thread(audit_log.reader.inclusion_proof, 5, 3)
    assert inconsistent.value.status == grpc.StatusCode.INVALID_ARGUMENT
    assert "index" in inconsistent.value.message
    with pytest.raises(ExchangeError) as sizes:
        await asyncio.to_thread(audit_log.reader.consistency_proof, 8, 4)
    assert sizes.value.status == grpc.StatusCode.INVALID_ARGUMENT
    assert "first_size" in sizes.value.message


async def test_a_restarted_log_continues_the_same_tree(
    engine: sa.Engine, audit_config: AuditConfig
) -> None:
    public_key = load_public_key_raw(audit_config.public_key)
    log = AuditLog.open(engine, audit_config)
    await log.start()
    await asyncio.gather(*(log.append(lookup_event(i)) for i in range(600)))
    await log.checkpoint(fresh=True)
    await log.close()

    log = AuditLog.open(engine, audit_config)
    await log.start()
    receipt = await log.append(lookup_event(600))
    checkpoint = verify_checkpoint(await log.checkpoint(fresh=True), public_key)
    await log.close()

    leaves = [rfc6962.leaf(leaf) for _, leaf in stored_leaves(engine)]
    assert receipt.entry_index == 600
    assert checkpoint.tree_size == 601 and checkpoint.root_hash == rfc6962.mth(leaves)


async def test_an_empty_log_has_a_signed_empty_checkpoint(
    audit_log: AuditLog, audit_config: AuditConfig
) -> None:
    signed = await audit_log.checkpoint()
    checkpoint = verify_checkpoint(signed, load_public_key_raw(audit_config.public_key))
    assert checkpoint.tree_size == 0
    assert checkpoint.root_hash == rfc6962.mth([])


async def test_a_closed_log_refuses_appends(engine: sa.Engine, audit_config: AuditConfig) -> None:
    log = AuditLog.open(engine, audit_config)
    await log.start()
    await log.close()
    with pytest.raises(ExchangeError) as closed:
        await log.append(lookup_event(1))
    assert closed.value.status == grpc.StatusCode.UNAVAILABLE


async def test_two_logs_on_one_database_append_one_gapless_log(
    database_url: str, engine: sa.Engine, audit_config: AuditConfig
) -> None:
    # Two hub processes share the database: each has its own engine (own connections).
    other_engine = make_engine(database_url)
    first, second = AuditLog.open(engine, audit_config), AuditLog.open(other_engine, audit_config)
    await first.start()
    await second.start()
    try:
        receipts = await asyncio.gather(
            *(log.append(lookup_event(i)) for i in range(300) for log in (first, second))
        )
        checkpoints = await asyncio.gather(
            first.checkpoint(fresh=True), second.checkpoint(fresh=True)
        )
    finally:
        await first.close()
        await second.close()
        other_engine.dispose()

    stored = stored_leaves(engine)
    assert sorted(r.entry_index for r in receipts) == list(range(600))
    assert [idx for idx, _ in stored] == list(range(600))
    assert all(json.loads(leaf)["index"] == idx for idx, leaf in stored)
    sizes = [audit_pb2.Checkpoint.FromString(c.checkpoint).tree_size for c in checkpoints]
    assert sizes == [600, 600]
    root = audit_pb2.Checkpoint.FromString(checkpoints[0].checkpoint).root_hash
    assert root == rfc6962.mth([rfc6962.leaf(leaf) for _, leaf in stored])


# --- group commit: lookups under way share commits; one alone never waits --------------------


async def started_log(engine: sa.Engine, config: AuditConfig, **changes: Any) -> AuditLog:
    log = AuditLog.open(engine, dataclasses.replace(config, **changes))
    await log.start()
    return log


async def lookups_appending_after(log: AuditLog, delays: list[float]) -> list[lookup_pb2.Receipt]:
    """One lookup under way per delay, all at once; each appends after its delay (seconds)."""

    async def lookup(number: int, delay: float) -> lookup_pb2.Receipt:
        with log.under_way():
            await asyncio.sleep(delay)
            return await log.append(lookup_event(number))

    return await asyncio.gather(*(lookup(i, delay) for i, delay in enumerate(delays)))


async def test_lookups_under_way_share_one_commit_when_they_finish_apart(
    engine: sa.Engine, audit_config: AuditConfig
) -> None:
    log = await started_log(engine, audit_config, group_commit_wait_ms=1000)
    try:  # eight lookups ending 5 ms apart
        receipts = await lookups_appending_after(log, [i * 0.005 for i in range(8)])
    finally:
        await log.close()
    assert log.batches_committed == 1
    assert len({r.promise for r in receipts}) == 1  # one fsync, one signature for all eight
    assert sorted(r.entry_index for r in receipts) == list(range(8))


async def test_without_the_wait_lookups_finishing_apart_commit_apart(
    engine: sa.Engine, audit_config: AuditConfig
) -> None:
    log = await started_log(engine, audit_config, group_commit_wait_ms=0)
    try:
        await lookups_appending_after(log, [i * 0.02 for i in range(8)])
    finally:
        await log.close()
    assert log.batches_committed >= 4


@pytest.mark.parametrize("others", [0, 2])
async def test_a_lookup_with_few_others_under_way_never_waits_to_commit(
    engine: sa.Engine, audit_config: AuditConfig, others: int
) -> None:
    log = await started_log(engine, audit_config, group_commit_wait_ms=1000)
    try:
        with contextlib.ExitStack() as under_way:
            for _ in range(others):  # fewer than group_commit_siblings (4)
                under_way.enter_context(log.under_way())
            with log.under_way():
                started = time.monotonic()
                await log.append(lookup_event(1))
                elapsed = time.monotonic() - started
    finally:
        await log.close()
    assert elapsed < 0.5  # not the 1 s group commit wait


async def test_on_sqlite_the_write_ahead_log_starts_over_instead_of_growing(
    tmp_path: Path, audit_config: AuditConfig, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Each commit adds at least one 16 KiB page to the WAL. Until a checkpoint lets SQLite
    # start the WAL over, the file grows with every commit (and each fsync costs more).
    monkeypatch.setattr("audit.log.WAL_CHECKPOINT_SECONDS", 0.05)
    engine = make_engine(f"sqlite:///{tmp_path / 'exchange.db'}")
    upgrade(engine)
    log = AuditLog.open(engine, audit_config)
    await log.start()
    commits = 1500
    try:
        for number in range(commits):  # lookups one after another, never idle for long
            with log.under_way():
                await log.append(lookup_event(number))
            await asyncio.sleep(0.0005)
        wal_bytes = (tmp_path / "exchange.db-wal").stat().st_size
    finally:
        await log.close()
        engine.dispose()
    assert log.batches_committed == commits
    assert wal_bytes < commits * 16384 / 3  # it started over, several times


def hold_append_lock(conn: sa.Connection) -> None:
    """Take the log's append lock on `conn` until its transaction ends (another writer)."""
    if conn.dialect.name == "sqlite":
        store.begin_immediate(conn)
    else:
        conn.execute(sa.select(sa.func.pg_advisory_xact_lock(store.APPEND_LOCK, store.SCHEMA)))


async def test_a_lone_append_waits_for_a_held_lock_off_the_event_loop(
    database_url: str, audit_log: AuditLog, engine: sa.Engine
) -> None:
    other_writer = make_engine(database_url)
    try:
        with other_writer.connect() as conn:
            hold_append_lock(conn)
            with audit_log.under_way():  # a lookup on its own: it would commit inline
                appending = asyncio.create_task(audit_log.append(lookup_event(7)))
                started = time.monotonic()
                for _ in range(20):
                    await asyncio.sleep(0.01)
                ticking = time.monotonic() - started
                assert not appending.done()  # waiting for the lock ...
                conn.rollback()  # ... which the other writer now lets go
                receipt = await appending
    finally:
        other_writer.dispose()
    assert ticking < 2  # the event loop ran on meanwhile: only the writer thread waited
    assert receipt.entry_index == 0
    assert [idx for idx, _ in stored_leaves(engine)] == [0]


def test_an_append_that_may_not_wait_stores_nothing_while_the_lock_is_held(
    database_url: str, engine: sa.Engine, audit_config: AuditConfig
) -> None:
    keys = LogKeys.load(audit_config)
    prepared = [entry.prepare(lookup_event(1), keys, entry.time_now())]
    other_writer = make_engine(database_url)
    writer = store.writer_connection(engine)
    try:
        with other_writer.connect() as conn:
            hold_append_lock(conn)
            with pytest.raises(store.AppendLockBusy):
                store.append_batch(
                    writer, prepared, lambda p, i: entry.seal(p, i, keys), wait_for_lock=False
                )
        sealed = store.append_batch(writer, prepared, lambda p, i: entry.seal(p, i, keys))
    finally:
        writer.close()
        other_writer.dispose()
    assert [s.index for s in sealed] == [0]  # the refused attempt left no entry, no gap
    assert [idx for idx, _ in stored_leaves(engine)] == [0]


async def test_a_group_commit_waits_no_longer_once_every_lookup_under_way_has_appended(
    engine: sa.Engine, audit_config: AuditConfig
) -> None:
    log = await started_log(engine, audit_config, group_commit_wait_ms=1000)
    try:  # two waves, 10 ms apart
        started = time.monotonic()
        receipts = await lookups_appending_after(log, [0.01 * (i % 2) for i in range(8)])
        elapsed = time.monotonic() - started
    finally:
        await log.close()
    assert elapsed < 0.5  # not the 1 s wait: the last of the eight ended it
    assert log.batches_committed <= 2
    assert sorted(r.entry_index for r in receipts) == list(range(8))


async def test_a_group_commit_stops_waiting_for_lookups_that_stopped_joining(
    engine: sa.Engine, audit_config: AuditConfig
) -> None:
    # Lookups stuck on a slow node stay under way: a commit gives up on them once a quarter
    # of its window passes with none joining, instead of holding every receipt for all of it.
    log = await started_log(engine, audit_config, group_commit_wait_ms=1000)
    try:
        with contextlib.ExitStack() as stuck:
            for _ in range(6):
                stuck.enter_context(log.under_way())
            started = time.monotonic()
            receipts = await lookups_appending_after(log, [0.0, 0.02, 0.04])
            elapsed = time.monotonic() - started
    finally:
        await log.close()
    assert elapsed < 0.8  # a quarter (0.25 s) with none joining, not the whole 1 s window
    assert log.batches_committed == 1  # the three that came 20 ms apart still shared it
    assert sorted(r.entry_index for r in receipts) == [0, 1, 2]


# --- a change made in the transaction that records it (the registry's changes) ---------------


def registry_change(department: Department) -> Callable[[sa.Connection], AuditEvent]:
    """Registering `department`, as RegistryService makes it: in the log's transaction."""

    def change(conn: sa.Connection) -> AuditEvent:
        stored = RegistryStore(conn.engine).within(conn).register_department(department)
        return AuditEvent(
            event=EventKind.REGISTRY_CHANGE,
            outcome=Outcome.GRANTED,
            status="OK",
            method="/exchange.v1.RegistryService/RegisterDepartment",
            caller="registry-admin",
            role="admin",
            change_after=to_json(stored),
        )

    return change


async def test_a_change_and_its_entry_are_committed_together(
    audit_log: AuditLog, engine: sa.Engine
) -> None:
    await audit_log.append(lookup_event(0))
    receipt = await audit_log.append_change(registry_change(psb()))

    assert receipt.entry_index == 1
    assert [d.code for d in RegistryStore(engine).list_departments()] == ["PSB"]
    (_, leaf), *_ = [item for item in stored_leaves(engine) if item[0] == 1]
    assert json.loads(json.loads(leaf)["change_after"])["code"] == "PSB"
    # Lookups appended after it carry on the same gapless log.
    assert (await audit_log.append(lookup_event(2))).entry_index == 2


async def test_a_change_whose_entry_cannot_be_stored_is_not_made(
    audit_log: AuditLog, engine: sa.Engine
) -> None:
    version = version_of(engine)

    with inserts_refused(engine, "audit_entries"), pytest.raises(ExchangeError) as failed:
        await audit_log.append_change(registry_change(psb()))

    assert failed.value.status == grpc.StatusCode.UNAVAILABLE
    assert "neither made nor recorded" in failed.value.message
    assert RegistryStore(engine).list_departments() == []
    assert version_of(engine) == version
    assert stored_leaves(engine) == []


async def test_a_change_the_registry_refuses_leaves_the_log_and_the_registry_as_they_were(
    audit_log: AuditLog, engine: sa.Engine
) -> None:
    department = psb()
    await audit_log.append_change(registry_change(department))
    version = version_of(engine)

    with pytest.raises(ExchangeError) as refused:
        await audit_log.append_change(registry_change(dataclasses.replace(department, name="x")))

    assert refused.value.status == grpc.StatusCode.ALREADY_EXISTS
    assert [d.name for d in RegistryStore(engine).list_departments()] == [department.name]
    assert version_of(engine) == version  # its version bump was rolled back too
    assert [idx for idx, _ in stored_leaves(engine)] == [0]
    # The writer's connection is still good for the next append.
    assert (await audit_log.append(lookup_event(1))).entry_index == 1


async def test_a_change_whose_receipt_cannot_be_signed_is_reported_as_made(
    audit_log: AuditLog, engine: sa.Engine, monkeypatch: pytest.MonkeyPatch
) -> None:
    def broken(*args: Any) -> list[lookup_pb2.Receipt]:
        raise RuntimeError("signing key unreadable")

    monkeypatch.setattr("audit.log.sign_batch", broken)

    with pytest.raises(ExchangeError) as caught:
        await audit_log.append_change(registry_change(psb()))

    # Committed before the signature failed: the administrator must not retry as if not.
    assert caught.value.status == grpc.StatusCode.INTERNAL
    assert caught.value.message.startswith("the change was made and recorded")
    assert [d.code for d in RegistryStore(engine).list_departments()] == ["PSB"]
    assert [idx for idx, _ in stored_leaves(engine)] == [0]


@pytest.mark.postgres
async def test_a_change_whose_commit_is_lost_is_reported_as_perhaps_made(
    postgres_url: str, audit_config: AuditConfig, monkeypatch: pytest.MonkeyPatch
) -> None:
    engine = make_engine(postgres_url)
    upgrade(engine)
    log = await started_log(engine, audit_config)
    append_change = store.append_change

    def losing_the_connection_at_commit(
        conn: sa.Connection, change: Any, sealer: Any, *, before_commit: Any
    ) -> list[entry.SealedEntry]:
        def then_the_server_ends_the_session(sealed: Any) -> None:
            before_commit(sealed)
            backend = conn.connection.dbapi_connection.info.backend_pid  # type: ignore[union-attr]
            with engine.connect() as other:
                other.execute(sa.text("SELECT pg_terminate_backend(:pid)"), {"pid": backend})

        return append_change(conn, change, sealer, before_commit=then_the_server_ends_the_session)

    monkeypatch.setattr(store, "append_change", losing_the_connection_at_commit)
    try:
        with pytest.raises(ExchangeError) as failed:
            await log.append_change(registry_change(psb()))
        monkeypatch.undo()

        # The COMMIT never reached the server here, but the hub cannot know that: it must not
        # tell the administrator that retrying is safe.
        assert failed.value.status == grpc.StatusCode.UNAVAILABLE
        assert "may or may not have been made" in failed.value.message
        assert RegistryStore(engine).list_departments() == []
        # The writer connects afresh, and the log carries on without a gap.
        assert (await log.append(lookup_event(0))).entry_index == 0
        assert (await log.append_change(registry_change(psb()))).entry_index == 1
    finally:
        await log.close()
        engine.dispose()


@pytest.mark.postgres
async def test_an_entry_the_database_refuses_fails_alone_not_with_its_batch(
    postgres_url: str, audit_config: AuditConfig, monkeypatch: pytest.MonkeyPatch
) -> None:
    engine = make_engine(postgres_url)
    upgrade(engine)
    prepare = entry.prepare

    def with_a_nul_in_one_column(event: AuditEvent, keys: LogKeys, at: str) -> Any:
        prepared = prepare(event, keys, at)
        if event.request_id == "req-10":  # what entry.query_text keeps out, let through
            prepared.columns = (*prepared.columns[:-1], "birth\x00registration")
        return prepared

    monkeypatch.setattr(entry, "prepare", with_a_nul_in_one_column)
    log = await started_log(engine, audit_config)
    try:
        results = await asyncio.gather(
            *(log.append(lookup_event(i)) for i in range(30)), return_exceptions=True
        )
        await log.close()

        refused = results.pop(10)
        assert isinstance(refused, ExchangeError)
        assert refused.status == grpc.StatusCode.UNAVAILABLE
        assert refused.message == "audit log unavailable; the entry was not recorded"
        receipts = [r for r in results if isinstance(r, lookup_pb2.Receipt)]
        assert sorted(r.entry_index for r in receipts) == list(range(29))
        assert [idx for idx, _ in stored_leaves(engine)] == list(range(29))
    finally:
        await log.close()
        engine.dispose()


async def test_changes_made_among_lookups_leave_one_gapless_log(
    audit_log: AuditLog, engine: sa.Engine
) -> None:
    departments = [dataclasses.replace(psb(), code=f"D{n:02d}", name=f"部门{n}") for n in range(8)]

    async def lookup(number: int) -> int:
        with audit_log.under_way():  # as the hub holds it: group commit at work
            await asyncio.sleep(0.001 * (number % 5))
            return (await audit_log.append(lookup_event(number))).entry_index

    async def change(department: Department) -> int:
        return (await audit_log.append_change(registry_change(department))).entry_index

    indexes = await asyncio.gather(
        *(lookup(n) for n in range(200)), *(change(d) for d in departments)
    )

    assert sorted(indexes) == list(range(208))
    assert [idx for idx, _ in stored_leaves(engine)] == list(range(208))
    assert {d.code for d in RegistryStore(engine).list_departments()} == {
        d.code for d in departments
    }
    assert audit_log.batches_committed < 200  # the lookups still shared commits
