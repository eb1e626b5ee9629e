"""The audit log the hub appends to: group commit, receipts, and the sequencer's schedule.

`append()` builds the entry (everything but its index) and waits. One writer task takes
everything queued (up to `max_batch`) and hands it to the writer thread, which stores the
whole batch in one transaction under the database's append lock; one promise over the
batch's Merkle root is signed (each receipt carries its entry's path to that root), and once
the transaction is committed every waiting append is resolved. While a batch is being
committed the next one gathers in the queue, so a burst of concurrent appends shares a few
commits instead of paying one fsync each.

Group commit goes one step further under load, as PostgreSQL's commit_delay does: callers
hold `under_way()` around work that will append (the hub, around each lookup), and when at
least `group_commit_siblings` others are under way, the writer waits up to
`group_commit_wait_ms` before taking the next batch, so they join it; it stops waiting as
soon as they all have, or once a while passes with none joining (`_let_others_join`). A
commit costs an fsync and a signature whatever its size (about 0.25 ms of CPU on the
development VM); at a thousand lookups a second, batches of one or two cost a fifth of the
hub's CPU, batches of ten a twentieth. A lookup on its own never waits: on SQLite it even
commits inline, on the event loop, sparing two thread hand-offs (see `_append_alone`).

Each batch is signed in a thread of its own while its commit waits for the fsync, the one
step here that frees the GIL; the promise's time is still read after the entries are sealed.

A second task runs the sequencer every `checkpoint_interval_seconds`, and `checkpoint()`
runs it on demand. On SQLite a third copies the write-ahead log into the database file every
`WAL_CHECKPOINT_SECONDS` (see `_keep_wal_short`).
"""

from __future__ import annotations

import asyncio
import collections
import concurrent.futures
import contextlib
import datetime as dt
import functools
import logging
import time
from collections.abc import AsyncIterator, Callable, Sequence
from typing import Protocol

import grpc
import sqlalchemy as sa

from audit import entry, store
from audit.config import AuditConfig
from audit.events import AuditEvent
from audit.export import ExportRecord
from audit.keys import LogKeys
from audit.reader import LogReader
from audit.sequencer import Sequencer
from audit.signing import sign_batch
from exchange.errors import ExchangeError, unavailable
from exchange.v1 import audit_pb2, lookup_pb2

log = logging.getLogger(__name__)

_Waiting = tuple[entry.PreparedEntry, "asyncio.Future[lookup_pb2.Receipt]"]


class _Write(Protocol):
    """How one commit stores its entries on the writer's connection: store.append_batch with
    the entries bound, or store.append_change with the change bound."""

    def __call__(
        self,
        conn: sa.Connection,
        *,
        sealer: store.Sealer,
        before_commit: Callable[[Sequence[entry.SealedEntry]], object],
    ) -> list[entry.SealedEntry]: ...


# A group commit stops waiting once this part of its window passes with no lookup joining.
QUIET_PARTS = 4

# How often, on SQLite, the write-ahead log is copied into the database file (see
# _keep_wal_short).
WAL_CHECKPOINT_SECONDS = 1.0


class AuditLog:
    """An append-only, tamper-evident log of who accessed what (implements AuditSink)."""

    def __init__(self, engine: sa.Engine, config: AuditConfig, keys: LogKeys) -> None:
        self.engine = engine
        self.config = config
        self.keys = keys
        self.sequencer = Sequencer(engine, keys)
        self.reader = LogReader(engine, self.sequencer)
        self.batches_committed = 0  # transactions that stored entries (group commit at work)
        self.entries_committed = 0
        self.seconds_storing = 0.0  # time the writer thread spent in those transactions
        self._queue: collections.deque[_Waiting] = collections.deque()
        self._under_way = _Counter()
        self._in_writer_thread = 0  # commits handed to the writer thread and not yet done
        # Inline commits only to a local file: a database across the network could keep the
        # event loop waiting on a connection or a round trip.
        self._commit_inline = engine.dialect.name == "sqlite"
        self._wakeup = asyncio.Event()
        self._all_joined = asyncio.Event()
        self._closing = False
        self._writer: asyncio.Task[None] | None = None
        self._ticker: asyncio.Task[None] | None = None
        self._wal_keeper: asyncio.Task[None] | None = None
        self._write_thread = concurrent.futures.ThreadPoolExecutor(1, "audit-writer")
        self._connection: sa.Connection | None = None  # one committer at a time uses it
        self._sequence_thread = concurrent.futures.ThreadPoolExecutor(1, "audit-sequencer")
        # Signs each batch while its commit waits on the disk (see _store_and_sign).
        self._sign_thread = concurrent.futures.ThreadPoolExecutor(1, "audit-signer")

    @classmethod
    def open(cls, engine: sa.Engine, config: AuditConfig) -> AuditLog:
        """A log on `engine` (schema already migrated) with the keys named by `config`."""
        return cls(engine, config, LogKeys.load(config))

    @property
    def log_id(self) -> str:
        """The log's identity: the key id of its signing key."""
        return self.keys.log_id

    @property
    def public_key_raw(self) -> bytes:
        """The raw 32-byte Ed25519 key receipts and checkpoints verify with."""
        return self.keys.public_key_raw

    async def start(self) -> None:
        """Re-derive the tree frontier from the database and start writing and sequencing."""
        loop = asyncio.get_running_loop()
        await loop.run_in_executor(self._sequence_thread, self.sequencer.load)
        self._writer = asyncio.create_task(self._write_batches(), name="audit-writer")
        self._ticker = asyncio.create_task(self._sequence_periodically(), name="audit-sequencer")
        if self.engine.dialect.name == "sqlite":
            self._wal_keeper = asyncio.create_task(self._keep_wal_short(), name="audit-wal")

    async def close(self) -> None:
        """Finish every queued append, sign a last checkpoint if the tree grew, and stop."""
        if self._closing:
            return
        self._closing = True
        self._wakeup.set()
        if self._writer is not None:
            await self._writer
        # Changes (append_change) go to the writer thread directly, not through the queue:
        # closing the connection there waits for any still being committed.
        loop = asyncio.get_running_loop()
        await loop.run_in_executor(self._write_thread, self._close_connection)
        for task in (self._wal_keeper, self._ticker):
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        if self._ticker is not None:
            with contextlib.suppress(Exception):
                await self._sequence(fresh=False)
        self._write_thread.shutdown()
        self._sequence_thread.shutdown()
        self._sign_thread.shutdown()
        log.info(
            "audit log closed: %d entries committed in %d transactions",
            self.entries_committed,
            self.batches_committed,
        )

    def under_way(self) -> _Counter:
        """Hold (`with log.under_way():`) around work that will append when it ends."""
        return self._under_way

    async def append(self, event: AuditEvent) -> lookup_pb2.Receipt:
        """Record `event`; returns its signed receipt once the entry is durable."""
        if self._closing or self._writer is None:
            raise unavailable("audit log is not running; nothing can be recorded")
        prepared = entry.prepare(event, self.keys, entry.time_now())
        # On SQLite, a lookup on its own (the one under way, nothing queued or being committed)
        # commits inline. Anything else goes through the queue, so that a burst of appends
        # from callers that do not say they are under way (refusals, say) still shares commits.
        if (
            self._commit_inline
            and self._under_way.count == 1
            and not self._queue
            and not self._in_writer_thread
        ):
            receipt = self._append_alone(prepared)
            if receipt is not None:
                return receipt
        future: asyncio.Future[lookup_pb2.Receipt] = asyncio.get_running_loop().create_future()
        self._queue.append((prepared, future))
        self._wakeup.set()
        if len(self._queue) >= self._under_way.count:
            self._all_joined.set()  # nobody else under way: a group commit waits no longer
        return await future

    async def append_change(
        self, change: Callable[[sa.Connection], AuditEvent]
    ) -> lookup_pb2.Receipt:
        """Make a change to the log's database and record it: `change` runs in the writer
        thread, in the transaction that then stores the event it returns, so the change and
        its entry are committed together or not at all. Whatever `change` raises rolls both
        back and is raised here (as UNAVAILABLE unless it is an ExchangeError, like a failure
        to store the entry). The registry's changes are made so: exchange/registry/service.py.
        """
        if self._closing or self._writer is None:
            raise unavailable("audit log is not running; nothing can be changed or recorded")
        keys = self.keys

        def prepared(conn: sa.Connection) -> list[entry.PreparedEntry]:
            return [entry.prepare(change(conn), keys, entry.time_now())]

        try:
            (receipt,) = await self._commit_in_thread(
                asyncio.get_running_loop(), functools.partial(store.append_change, change=prepared)
            )
        except _NotSigned:
            raise ExchangeError(
                grpc.StatusCode.INTERNAL,
                "the change was made and recorded, but its receipt could not be signed",
            ) from None
        except ExchangeError:
            raise
        except store.CommitOutcomeUnknown as exc:
            log.error("audit log: a change's commit was lost; it may have been made", exc_info=exc)
            raise unavailable(
                "audit log's database failed while committing: the change may or may not have "
                "been made and recorded; look it up in the registry before trying again"
            ) from exc
        except Exception as exc:
            log.error("audit log: a change was neither made nor recorded", exc_info=exc)
            raise unavailable(
                "audit log unavailable; the change was neither made nor recorded"
            ) from exc
        return receipt

    async def checkpoint(self, *, fresh: bool = False) -> audit_pb2.SignedCheckpoint:
        """The latest signed checkpoint; with fresh=True, one over everything appended so far."""
        loop = asyncio.get_running_loop()
        latest = None
        if not fresh:
            latest = await loop.run_in_executor(self._sequence_thread, self.sequencer.latest)
        if latest is None:
            latest = await self._sequence(fresh=True)
            assert latest is not None  # a fresh round always returns a checkpoint
        return latest

    async def export_records(
        self, from_index: int = 0, to_index: int = 0
    ) -> AsyncIterator[ExportRecord]:
        """The records of an export (see LogReader.export_chunks), read in a thread."""
        chunks = self.reader.export_chunks(from_index, to_index)
        while True:
            chunk = await asyncio.to_thread(next, chunks, None)
            if chunk is None:
                return
            for record in chunk:
                yield record

    async def _write_batches(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            await self._wakeup.wait()
            self._wakeup.clear()
            while self._queue:
                await self._let_others_join()
                count = min(len(self._queue), self.config.max_batch)
                await self._commit_batch(loop, [self._queue.popleft() for _ in range(count)])
            if self._closing and not self._queue:
                return

    async def _commit_batch(self, loop: asyncio.AbstractEventLoop, batch: list[_Waiting]) -> None:
        """Commit `batch` and resolve its appends with their receipts or the failure."""
        try:
            receipts = await self._commit_in_thread(
                loop, functools.partial(store.append_batch, prepared=[item[0] for item in batch])
            )
        except Exception as exc:
            if len(batch) > 1 and store.refused_value(self.engine, exc):
                # The database refused a value of one entry (entry.query_text keeps out the
                # one known: NUL on PostgreSQL). The others must not go unrecorded with it.
                log.error("audit log: a batch was refused; committing its entries one by one")
                for item in batch:
                    await self._commit_batch(loop, [item])
                return
            failure = _as_failure(len(batch), exc)
            for _, future in batch:
                if not future.done():
                    future.set_exception(failure)
            return
        for (_, future), receipt in zip(batch, receipts, strict=True):
            if not future.done():
                future.set_result(receipt)

    async def _commit_in_thread(
        self, loop: asyncio.AbstractEventLoop, write: _Write
    ) -> list[lookup_pb2.Receipt]:
        self._in_writer_thread += 1
        committing = self._write_thread.submit(self._store_and_sign, write)
        # Counted until the thread is done with the connection, even if this task is cancelled
        # first: until then no inline commit may use it.
        committing.add_done_callback(lambda _: loop.call_soon_threadsafe(self._left_writer_thread))
        return await asyncio.wrap_future(committing)

    def _left_writer_thread(self) -> None:
        self._in_writer_thread -= 1

    def _append_alone(self, prepared: entry.PreparedEntry) -> lookup_pb2.Receipt | None:
        """Commit one entry right here (SQLite), when nothing else is appending; None if the
        append lock is taken (by the sequencer, another process), to leave it to the writer.

        With no other append to share a commit with, handing the entry to the writer thread
        and its receipt back only adds two thread wake-ups to the caller's wait (about 0.25 ms
        on the development VM). Other calls on the event loop wait for this one commit, an
        fsync (the writer connection never checkpoints the WAL; _keep_wal_short does); the lock
        is only tried, never waited for.
        """
        try:
            alone = functools.partial(store.append_batch, prepared=[prepared], wait_for_lock=False)
            return self._store_and_sign(alone)[0]
        except store.AppendLockBusy:
            return None
        except ExchangeError:
            raise
        except Exception as exc:
            raise _not_recorded(1, exc) from exc

    async def _let_others_join(self) -> None:
        """Before a commit, wait up to group_commit_wait_ms while enough others are under way:
        until every lookup under way has appended, or until a quarter of the window
        (QUIET_PARTS) passes with none joining. Those still out are slow then, waiting on a
        node say, and the receipts of those that did append should not wait for them.

        The longer the window, the fewer commits share out their fixed cost: an fsync, a
        signature and a dozen hand-offs of the GIL between threads. Measured at concurrency
        64 (bench/README.md), 4 ms gave about eight entries a commit and 24 ms about
        nineteen, with a tenth less hub CPU per lookup; the quiet rule keeps the longer
        window from delaying anyone when appends stop coming.

        Lookups whose receipts the last commit just handed out still count as under way until
        they resume and finish. Counting them errs towards waiting, and that is the better
        error: measured at concurrency 64, leaving them out first halved the entries per
        commit (7 to 3) and cost the hub a fifth more CPU per lookup.
        """
        wait_ms = self.config.group_commit_wait_ms
        if wait_ms <= 0 or self._closing:
            return
        if self._under_way.count - len(self._queue) < self.config.group_commit_siblings:
            return
        loop = asyncio.get_running_loop()
        window_ends = loop.time() + wait_ms / 1000
        quiet = wait_ms / 1000 / QUIET_PARTS
        self._all_joined.clear()
        while (remaining := window_ends - loop.time()) > 0:
            joined = len(self._queue)
            try:
                await asyncio.wait_for(self._all_joined.wait(), min(quiet, remaining))
                return  # every lookup under way has appended
            except TimeoutError:
                if len(self._queue) == joined:
                    return  # none joined for a while: those left are slow (a node, say)

    def _store_and_sign(self, write: _Write) -> list[lookup_pb2.Receipt]:
        """Commit the next entries (and, for append_change, the change they record) with
        `write`, then sign them; in the writer thread, or inline by `_append_alone`, never
        both at once."""
        keys = self.keys
        if self._connection is None:
            self._connection = store.writer_connection(self.engine)
        started = time.perf_counter()
        # The batch is signed in a thread of its own while the commit waits for its fsync (the
        # GIL is free then): on the development VM that took 60 µs off a lone lookup's wait.
        # The promise's time is read after the entries were sealed, so never before theirs;
        # if the commit fails, the signature is dropped unseen.
        signing: list[concurrent.futures.Future[list[lookup_pb2.Receipt]]] = []

        def sign_while_committing(sealed: Sequence[entry.SealedEntry]) -> None:
            hashes = [e.leaf_hash for e in sealed]
            now = dt.datetime.now(dt.UTC)
            signing.append(self._sign_thread.submit(sign_batch, keys, sealed[0].index, hashes, now))

        def sealer(item: entry.PreparedEntry, index: int) -> entry.SealedEntry:
            return entry.seal(item, index, keys)

        try:
            sealed = write(self._connection, sealer=sealer, before_commit=sign_while_committing)
        except (store.AppendLockBusy, ExchangeError):  # nothing wrong with the connection
            raise
        except Exception:
            self._close_connection()  # it may be broken; the next batch connects afresh
            raise
        self.seconds_storing += time.perf_counter() - started
        self.batches_committed += 1
        self.entries_committed += len(sealed)
        try:
            return signing[0].result()
        except Exception:
            log.exception("audit log: entries %d.. are stored but not signed", sealed[0].index)
            raise _NotSigned(
                grpc.StatusCode.UNAVAILABLE, "audit log could not sign a receipt"
            ) from None

    def _close_connection(self) -> None:
        connection, self._connection = self._connection, None
        if connection is not None:
            with contextlib.suppress(Exception):
                connection.close()

    async def _sequence(self, *, fresh: bool) -> audit_pb2.SignedCheckpoint | None:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(
            self._sequence_thread, lambda: self.sequencer.run(fresh=fresh)
        )

    async def _sequence_periodically(self) -> None:
        while True:
            await asyncio.sleep(self.config.checkpoint_interval_seconds)
            try:
                await self._sequence(fresh=False)
            except Exception:
                log.exception("audit log: sequencing failed; retrying next interval")

    async def _keep_wal_short(self) -> None:
        """Every WAL_CHECKPOINT_SECONDS, copy the write-ahead log into the database file.

        The writer connection never checkpoints (see store.writer_connection), and until a
        checkpoint has copied everything, every commit appends to the WAL and makes the file
        longer. Lengthening a file makes its fsync write the file's metadata too: with sqlite3
        alone on the development VM, one-entry commits back to back took 0.42 to 0.55 ms while
        the WAL grew and 0.25 to 0.30 ms once it was reused from its start, as SQLite does
        after a complete checkpoint.
        """
        loop = asyncio.get_running_loop()
        while True:
            await asyncio.sleep(WAL_CHECKPOINT_SECONDS)
            try:
                await loop.run_in_executor(self._sequence_thread, store.checkpoint_wal, self.engine)
            except Exception:
                log.exception("audit log: WAL checkpoint failed; retrying")


class _NotSigned(ExchangeError):
    """Entries were committed, but their receipts could not be signed."""


class _Counter:
    """A context manager counting who is inside it (one event loop; no lock needed)."""

    __slots__ = ("count",)

    def __init__(self) -> None:
        self.count = 0

    def __enter__(self) -> None:
        self.count += 1

    def __exit__(self, *exc_info: object) -> None:
        self.count -= 1


def _as_failure(count: int, exc: Exception) -> ExchangeError:
    """What the callers of a failed commit of `count` entries are told."""
    return exc if isinstance(exc, ExchangeError) else _not_recorded(count, exc)


def _not_recorded(count: int, exc: Exception) -> ExchangeError:
    if isinstance(exc, store.CommitOutcomeUnknown):
        log.error("audit log: a batch of %d entries may not be stored", count, exc_info=exc)
        return unavailable("audit log unavailable; the entry may not have been recorded")
    log.error("audit log: a batch of %d entries was not stored", count, exc_info=exc)
    return unavailable("audit log unavailable; the entry was not recorded")
