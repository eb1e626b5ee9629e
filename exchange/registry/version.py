"""Reading the registry version on every call, as cheaply as the database allows.

The hub asks for the registry version on every call, because a change committed by another
hub process must govern the very next call here. The answer must therefore come from a read
that *started after the call did*; how cheap that read is depends on the database:

- SQLite: a private connection to the same file, read synchronously on the event loop.
  Outside a transaction every SELECT sees every commit made before it (WAL), and the read is
  a single-row lookup of a few microseconds: far cheaper than handing it to a thread.
- PostgreSQL (psycopg): a private asynchronous connection in autocommit mode, on the event
  loop. Reads go in rounds: a call waits for the next round that starts after it arrived,
  so callers that arrive together share one round trip, and none is answered by a read
  that began before it came.
- Any other database: the same rounds, each read in a thread through the engine.
"""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
from pathlib import Path
from typing import TYPE_CHECKING, Any

import sqlalchemy as sa

from exchange.registry import rows

if TYPE_CHECKING:
    import psycopg

# How long the SQLite read may wait for a lock. Readers in WAL mode wait only in rare moments
# (the WAL being reset); past this the read falls back to the engine, in a thread.
SQLITE_READ_TIMEOUT_S = 0.05
VERSION_QUERY = "SELECT version FROM registry_version"


class VersionReader:
    """The current registry version, read freshly for each caller (see the module doc)."""

    def __init__(self, engine: sa.Engine) -> None:
        self._engine = engine
        self._sqlite_path = _sqlite_file(engine)
        self._sqlite: sqlite3.Connection | None = None
        self._postgres = _psycopg_conninfo(engine)
        self._async: psycopg.AsyncConnection[Any] | None = None
        self._async_loop: asyncio.AbstractEventLoop | None = None
        self._in_flight = False
        self._next_round: asyncio.Future[int] | None = None

    async def read(self) -> int:
        """The registry version as of a read that began after this call."""
        if self._sqlite_path is not None:
            try:
                return self._read_sqlite()
            except sqlite3.Error:
                self._close_sqlite()  # a broken connection is replaced on the next read
        return await self._read_in_round()

    async def aclose(self) -> None:
        """Close every private connection."""
        self._close_sqlite()
        connection, self._async = self._async, None
        if connection is not None:
            with contextlib.suppress(Exception):
                await connection.close()

    # SQLite

    def _read_sqlite(self) -> int:
        if self._sqlite is None:
            connection = sqlite3.connect(
                self._sqlite_path or "",
                timeout=SQLITE_READ_TIMEOUT_S,
                isolation_level=None,  # autocommit: every read sees the latest commit
                check_same_thread=False,  # used only synchronously, from an event loop
            )
            connection.execute("PRAGMA query_only = ON")
            self._sqlite = connection
        # fetchall: a statement read to its end ends its read transaction, so no WAL snapshot
        # stays pinned between calls.
        found = self._sqlite.execute(VERSION_QUERY).fetchall()
        if len(found) != 1:
            raise sqlite3.OperationalError("registry_version must hold exactly one row")
        return int(found[0][0])

    def _close_sqlite(self) -> None:
        connection, self._sqlite = self._sqlite, None
        if connection is not None:
            with contextlib.suppress(sqlite3.Error):
                connection.close()

    # Rounds (PostgreSQL and the rest)

    async def _read_in_round(self) -> int:
        loop = asyncio.get_running_loop()
        waiting = self._next_round
        if waiting is None:
            waiting = self._next_round = loop.create_future()
            if not self._in_flight:
                self._start_round(loop)
        # Shielded: one caller cancelled must not cancel the round the others wait for.
        return await asyncio.shield(waiting)

    def _start_round(self, loop: asyncio.AbstractEventLoop) -> None:
        waiting, self._next_round = self._next_round, None
        assert waiting is not None
        self._in_flight = True
        reading = loop.create_task(self._read_once(), name="registry-version")

        def finished(done: asyncio.Task[int]) -> None:
            self._in_flight = False
            if not waiting.done():
                if done.cancelled():
                    waiting.cancel()
                elif (error := done.exception()) is not None:
                    waiting.set_exception(error)
                else:
                    waiting.set_result(done.result())
            if self._next_round is not None:
                self._start_round(loop)

        reading.add_done_callback(finished)

    async def _read_once(self) -> int:
        if self._postgres is None:
            return await asyncio.to_thread(self._read_through_engine)
        import psycopg  # only hubs on PostgreSQL pay for loading it

        for attempt in (1, 2):
            try:
                connection = await self._postgres_connection()
                cursor = await connection.execute(VERSION_QUERY)
                found = await cursor.fetchall()
                if len(found) != 1:
                    raise RuntimeError("registry_version must hold exactly one row")
                return int(found[0][0])
            except psycopg.Error:
                await self.aclose()  # broken: the next attempt connects afresh
                if attempt == 2:
                    raise
        raise AssertionError("unreachable")

    async def _postgres_connection(self) -> psycopg.AsyncConnection[Any]:
        loop = asyncio.get_running_loop()
        if self._async is not None and self._async_loop is not loop:
            self._async = None  # made on another (finished) event loop: unusable here
        if self._async is None:
            import psycopg

            self._async = await psycopg.AsyncConnection.connect(
                self._postgres or "", autocommit=True
            )
            self._async_loop = loop
        return self._async

    def _read_through_engine(self) -> int:
        with self._engine.connect() as conn:
            return rows.read_version(conn)


def _sqlite_file(engine: sa.Engine) -> str | None:
    if engine.dialect.name != "sqlite":
        return None
    database = engine.url.database
    if not database or database == ":memory:" or database.startswith("file:"):
        return None
    return str(Path(database).resolve())


def _psycopg_conninfo(engine: sa.Engine) -> str | None:
    """libpq's connection string for `engine`'s database when it is PostgreSQL through
    psycopg 3: built from the URL's parts, so query parameters reach libpq as the engine's
    connections get them (rendered back into a URL, "-c a=b" options came out garbled)."""
    if engine.dialect.name != "postgresql" or engine.dialect.driver != "psycopg":
        return None
    from psycopg.conninfo import make_conninfo

    url = engine.url
    parts: dict[str, Any] = url.translate_connect_args(username="user", database="dbname")
    parts.update(url.query)
    return make_conninfo(**parts)
