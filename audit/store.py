"""Reading and writing the audit tables: batches of entries under the log's write lock, tree
nodes, checkpoints and leaf ranges.

Indexes must stay gapless and unique even when several hub processes append to one
database. Each batch therefore runs in one transaction that first takes the database's
write lock — a transaction-scoped advisory lock on PostgreSQL, BEGIN IMMEDIATE on SQLite —
and only then reads the next free index. All functions here are blocking; the log calls them
from its own threads.
"""

from __future__ import annotations

import contextlib
import functools
import sqlite3
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any

import sqlalchemy as sa

from audit.entry import ROW_COLUMNS, PreparedEntry, SealedEntry
from audit.tables import (
    audit_checkpoints,
    audit_entries,
    audit_query_index,
    audit_tree_nodes,
)
from exchange.db import SQLITE_LOCK_WAIT_S, metadata

# Advisory locks (PostgreSQL): one serialises appends, one elects the sequencer. A lock is
# the pair (key, hash of the schema), so logs in different schemas of one database (several
# exchanges, or test schemas) never wait for each other.
APPEND_LOCK = 0x0A0D17_01
SEQUENCER_LOCK = 0x0A0D17_02
SCHEMA = sa.func.hashtext(sa.func.current_schema())

# Checkpoints read per query by iter_checkpoints().
CHECKPOINT_CHUNK = 1000

# SQLite: how long checkpoint_wal() waits for readers and appends to let it start the WAL over.
WAL_RESTART_WAIT_MS = 5

Sealer = Callable[[PreparedEntry, int], SealedEntry]


class AppendLockBusy(Exception):
    """append_batch(wait_for_lock=False) found the append lock taken; nothing was stored."""


class CommitOutcomeUnknown(Exception):
    """The database connection failed during COMMIT: the transaction may have been committed
    or not, and only reading the database again can tell."""


def begin_immediate(conn: sa.Connection) -> None:
    """On SQLite, start `conn`'s transaction holding the database's write lock."""
    if conn.dialect.name == "sqlite":
        # pysqlite would BEGIN (deferred) lazily, at the first write; BEGIN IMMEDIATE takes
        # the write lock now, so reads that follow are serialised with every other writer.
        conn.exec_driver_sql("BEGIN IMMEDIATE")


def next_index(conn: sa.Connection) -> int:
    """The index the next entry gets: one past the largest stored (0 for an empty log)."""
    largest = conn.execute(sa.select(sa.func.max(audit_entries.c.idx))).scalar_one()
    return 0 if largest is None else int(largest) + 1


def writer_connection(engine: sa.Engine) -> sa.Connection:
    """A connection of the log's own for appending, outside the engine's pool.

    On SQLite it gets a large page cache: every commit rewrites the index pages it touched,
    and keeping them cached saves reading them back for the next batch.
    """
    conn = engine.connect()
    conn.detach()  # its settings must not leak to the pool's other users
    if conn.dialect.name == "sqlite":
        conn.exec_driver_sql("PRAGMA cache_size = -65536")  # 64 MiB
        # Its commits never checkpoint the WAL into the database file (tens of milliseconds,
        # and a lone lookup's commit runs on the event loop); checkpoint_wal() does, every
        # second, in the sequencer's thread.
        conn.exec_driver_sql("PRAGMA wal_autocheckpoint = 0")
        conn.commit()
    return conn


def checkpoint_wal(engine: sa.Engine) -> None:
    """SQLite: copy the write-ahead log into the database file and have the next append start
    the WAL over from its beginning (unless readers or appends kept it busy; the next call
    tries again).

    A PASSIVE checkpoint copies the bulk without blocking anyone, but appends go on meanwhile,
    so it never catches up, and SQLite starts the WAL over only after a checkpoint that did.
    RESTART then copies the few frames left. It holds the database's write lock from the
    moment it gets it until readers are done with the WAL, at most WAL_RESTART_WAIT_MS, plus
    two fsyncs: once a second, appends (an inline one goes to the writer thread, which waits)
    and registry writes may wait that long.
    """
    with engine.connect() as conn:
        dbapi = conn.connection.dbapi_connection
        assert dbapi is not None
        cursor = dbapi.cursor()
        try:
            (waited,) = cursor.execute("PRAGMA busy_timeout").fetchone()
            cursor.execute("PRAGMA wal_checkpoint(PASSIVE)")
            cursor.execute(f"PRAGMA busy_timeout = {WAL_RESTART_WAIT_MS}")
            try:
                cursor.execute("PRAGMA wal_checkpoint(RESTART)")
            finally:
                cursor.execute(f"PRAGMA busy_timeout = {int(waited)}")
        except BaseException:
            conn.invalidate()  # never back to the pool with a 5 ms busy timeout
            raise
        finally:
            cursor.close()


def append_batch(
    conn: sa.Connection,
    prepared: Sequence[PreparedEntry],
    sealer: Sealer,
    *,
    wait_for_lock: bool = True,
    before_commit: Callable[[Sequence[SealedEntry]], object] | None = None,
) -> list[SealedEntry]:
    """Store `prepared` as the next entries of the log in one durable transaction; return
    them sealed with their indexes. With wait_for_lock=False, raise AppendLockBusy at once
    instead of waiting when another transaction holds the append lock. `before_commit` gets
    the sealed entries once they are inserted, just before the commit (which may still fail).
    """
    return _append(conn, lambda: prepared, sealer, wait_for_lock, before_commit)


def append_change(
    conn: sa.Connection,
    change: Callable[[sa.Connection], Sequence[PreparedEntry]],
    sealer: Sealer,
    *,
    before_commit: Callable[[Sequence[SealedEntry]], object] | None = None,
) -> list[SealedEntry]:
    """Make `change` on `conn` and store the entries it returns, in one durable transaction
    (under the append lock): the change and its entries are committed together, or, if
    anything raises, including `change`, neither is."""
    try:
        return _append(conn, lambda: change(conn), sealer, True, before_commit)
    finally:
        # The change went through SQLAlchemy, which still counts its transaction open; the
        # DB-API connection has committed or rolled it back already. On a connection that
        # was lost this fails too, and must not hide why the append failed.
        if conn.in_transaction():
            with contextlib.suppress(sa.exc.DBAPIError):
                conn.rollback()


def _append(
    conn: sa.Connection,
    entries: Callable[[], Sequence[PreparedEntry]],
    sealer: Sealer,
    wait_for_lock: bool,
    before_commit: Callable[[Sequence[SealedEntry]], object] | None,
) -> list[SealedEntry]:
    # The DB-API connection directly, with plain tuples: this is the log's hot path, and
    # SQLAlchemy's statement handling cost more than the database's own work per batch.
    dbapi = conn.connection.dbapi_connection
    assert dbapi is not None
    try:
        cursor: Any = dbapi.cursor()
        try:
            _take_append_lock(cursor, conn.dialect, wait_for_lock)
            prepared = entries()
            # Read under the lock, in a statement of its own so that on PostgreSQL its
            # snapshot is taken after the lock was granted.
            cursor.execute(f"SELECT max(idx) FROM {audit_entries.name}")  # noqa: S608
            (largest,) = cursor.fetchone()
            first = 0 if largest is None else int(largest) + 1
            sealed = [sealer(entry, first + offset) for offset, entry in enumerate(prepared)]
            _insert_rows(
                cursor,
                conn.dialect,
                audit_entries.name,
                ROW_COLUMNS,
                [entry.row for entry in sealed],
            )
        finally:
            cursor.close()
        if before_commit is not None:
            before_commit(sealed)
    except BaseException:
        dbapi.rollback()
        raise
    try:
        dbapi.commit()
    except BaseException as exc:
        with contextlib.suppress(Exception):  # on a lost connection this fails too
            dbapi.rollback()
        # The driver's connection-level errors (psycopg's server gone, SQLite's I/O error)
        # leave the outcome open; an error the database itself answered with means rollback.
        driver = conn.dialect.loaded_dbapi
        if isinstance(exc, driver.OperationalError | driver.InterfaceError):
            raise CommitOutcomeUnknown(str(exc)) from exc
        raise
    return sealed


def refused_value(engine: sa.Engine, exc: BaseException) -> bool:
    """Whether `exc` is the database refusing a value it was given (a DataError): the
    transaction was rolled back, and the same statements without that value would do."""
    return isinstance(exc, engine.dialect.loaded_dbapi.DataError)


def _take_append_lock(cursor: Any, dialect: sa.Dialect, wait: bool) -> None:
    if dialect.name == "sqlite":
        cursor.execute(f"PRAGMA busy_timeout = {SQLITE_LOCK_WAIT_S * 1000 if wait else 0}")
        try:
            cursor.execute("BEGIN IMMEDIATE")  # see begin_immediate()
        except sqlite3.OperationalError as exc:
            if wait or exc.sqlite_errorcode != sqlite3.SQLITE_BUSY:
                raise
            raise AppendLockBusy from exc
        return
    if wait:
        cursor.execute(
            "SELECT pg_advisory_xact_lock(%s, hashtext(current_schema()))", (APPEND_LOCK,)
        )
        return
    cursor.execute(
        "SELECT pg_try_advisory_xact_lock(%s, hashtext(current_schema()))", (APPEND_LOCK,)
    )
    if not cursor.fetchone()[0]:
        raise AppendLockBusy


def _insert_rows(
    cursor: Any,
    dialect: sa.Dialect,
    table: str,
    columns: tuple[str, ...],
    rows: Sequence[tuple[Any, ...]],
) -> None:
    if dialect.name == "postgresql":
        # Binary COPY: one statement for the whole batch, and no hex-encoding of the leaf;
        # psycopg's pipelined executemany costs about three times as much per row.
        with cursor.copy(_copy_sql(table, columns)) as copy:
            copy.set_types(_copy_types(table, columns))
            for row in rows:
                copy.write_row(row)
    else:
        cursor.executemany(_insert_sql(dialect, table, columns), rows)


@functools.cache
def _copy_sql(table: str, columns: tuple[str, ...]) -> str:
    return f"COPY {table} ({', '.join(columns)}) FROM STDIN (FORMAT BINARY)"


@functools.cache
def _copy_types(table: str, columns: tuple[str, ...]) -> list[str]:
    """PostgreSQL type names of `columns`, which binary COPY needs to encode values."""
    types = []
    for name in columns:
        column_type = metadata.tables[table].c[name].type
        if isinstance(column_type, sa.LargeBinary):
            types.append("bytea")
        elif isinstance(column_type, sa.Integer):
            types.append("bigint")
        else:
            types.append("text")
    return types


@functools.cache
def _insert_sql(dialect: sa.Dialect, table: str, columns: tuple[str, ...]) -> str:
    marker = "?" if dialect.paramstyle == "qmark" else "%s"
    names = ", ".join(columns)
    markers = ", ".join(marker for _ in columns)
    return f"INSERT INTO {table} ({names}) VALUES ({markers})"  # noqa: S608 - constants only


def entry_count(conn: sa.Connection) -> int:
    """How many entries the log holds."""
    return next_index(conn)


def leaf_hashes(conn: sa.Connection, start: int, end: int) -> list[bytes]:
    """Leaf hashes of entries [start, end), in index order."""
    rows = conn.execute(
        sa.select(audit_entries.c.leaf_hash)
        .where(audit_entries.c.idx >= start, audit_entries.c.idx < end)
        .order_by(audit_entries.c.idx)
    )
    return [bytes(row[0]) for row in rows]


def tree_nodes(
    conn: sa.Connection, wanted: Iterable[tuple[int, int]]
) -> dict[tuple[int, int], bytes]:
    """Stored subtree hashes for the (level, position) pairs in `wanted` that exist."""
    keys = sorted(set(wanted))
    found: dict[tuple[int, int], bytes] = {}
    for chunk_start in range(0, len(keys), 500):
        chunk = keys[chunk_start : chunk_start + 500]
        rows = conn.execute(
            sa.select(
                audit_tree_nodes.c.level, audit_tree_nodes.c.position, audit_tree_nodes.c.hash
            ).where(sa.tuple_(audit_tree_nodes.c.level, audit_tree_nodes.c.position).in_(chunk))
        )
        for level, position, digest in rows:
            found[(int(level), int(position))] = bytes(digest)
    return found


def insert_tree_nodes(conn: sa.Connection, nodes: Sequence[tuple[int, int, bytes]]) -> None:
    """Store complete-subtree hashes computed by the sequencer."""
    if nodes:
        conn.execute(
            audit_tree_nodes.insert(),
            [
                {"level": level, "position": position, "hash": digest}
                for level, position, digest in nodes
            ],
        )


def index_entries(conn: sa.Connection, start: int, end: int) -> None:
    """Copy the query columns of entries [start, end) into the indexed audit_query_index."""
    columns = [column.name for column in audit_query_index.c]
    conn.execute(
        audit_query_index.insert().from_select(
            columns,
            sa.select(*(audit_entries.c[name] for name in columns)).where(
                audit_entries.c.idx >= start, audit_entries.c.idx < end
            ),
        )
    )


def latest_checkpoint(conn: sa.Connection) -> sa.Row[Any] | None:
    """The stored checkpoint with the largest tree size, or None."""
    return conn.execute(
        sa.select(audit_checkpoints).order_by(audit_checkpoints.c.tree_size.desc()).limit(1)
    ).first()


def signed_size(conn: sa.Connection) -> int:
    """The tree size of the latest checkpoint: how many entries the signed tree covers."""
    largest = conn.execute(sa.select(sa.func.max(audit_checkpoints.c.tree_size))).scalar()
    return 0 if largest is None else int(largest)


def checkpoint_at(conn: sa.Connection, tree_size: int) -> sa.Row[Any] | None:
    """The stored checkpoint of exactly `tree_size`, or None."""
    return conn.execute(
        sa.select(audit_checkpoints).where(audit_checkpoints.c.tree_size == tree_size)
    ).first()


def iter_checkpoints(
    engine: sa.Engine, low: int, high: int, chunk: int = CHECKPOINT_CHUNK
) -> Iterator[sa.Row[Any]]:
    """Stored checkpoints with low < tree_size <= high, smallest first, read in chunks (a log
    signs millions of them, too many to hold at once)."""
    size = audit_checkpoints.c.tree_size
    return in_chunks(engine, sa.select(audit_checkpoints).where(size <= high), size, low, chunk)


def iter_entries(
    engine: sa.Engine, start: int, end: int, chunk: int = 5000
) -> Iterator[tuple[int, bytes, bytes]]:
    """(index, leaf, leaf_hash) of entries [start, end) in index order, read in chunks."""
    entries = audit_entries.c
    query = sa.select(entries.idx, entries.leaf, entries.leaf_hash).where(entries.idx < end)
    for row in in_chunks(engine, query, entries.idx, start - 1, chunk):
        yield int(row.idx), bytes(row.leaf), bytes(row.leaf_hash)


def in_chunks(
    engine: sa.Engine, query: sa.Select[Any], key: sa.Column[Any], after: int, chunk: int
) -> Iterator[sa.Row[Any]]:
    """The rows of `query` whose integer `key` is beyond `after`, in `key` order, read `chunk`
    at a time, each chunk on a connection of its own: no transaction stays open for as long
    as a caller takes over millions of rows."""
    while True:
        with engine.connect() as conn:
            rows = conn.execute(query.where(key > after).order_by(key).limit(chunk)).all()
        if not rows:
            return
        yield from rows
        after = int(rows[-1]._mapping[key])
