"""The SQL backend: reads records from any database SQLAlchemy can reach, by URL.

Each certificate type maps to either a table (`table` + `subject_column`; the row with the
latest `issued_at_column` wins) or an operator-written `query`: a SELECT taking the subject id
as the bound parameter `:subject_id` (the first row wins, so order it). The subject id is
always a bound parameter and column names come only from the config, never from a request.
The hub spells subject ids in upper case; a table is also searched for the id in lower case
(a resident ID's check character is often stored as "x"), and `:subject_id_lower` holds it
for a query that needs the same. Rows without an `issued_at_column` value sort last.

    [backend]
    kind = "sql"
    url = "sqlite:///psb.db"            # relative SQLite paths: from the config file's folder
    statement_timeout_ms = 5000         # optional (default 5000): PostgreSQL ends longer reads

    [certificate_types.resident_identity]
    table = "residents"                 # optional: schema = "registry"
    subject_column = "id_number"
    document_id_column = "certificate_no"
    issued_at_column = "issued_on"
    valid_until_column = "expires_on"   # optional; NULL means valid without end
    timezone = "Asia/Shanghai"          # optional (default UTC): zone of dates stored without one
    fields = { name = "full_name", birth_date = "birth_date", address = "household_address" }

    [certificate_types.household_register]
    query = "SELECT h.no, h.registered, h.head FROM households h WHERE h.member_id = :subject_id"
    document_id_column = "no"
    issued_at_column = "registered"
    fields = { head_of_household = "head" }

The synchronous engine runs in the backend's own worker threads, so the event loop never
waits on the database, and reads the hub has given up on (a locked table, say) hold only
those threads until the statement timeout ends them, never the node's other work and never
its shutdown. One exception: a local SQLite file is read on the event loop
(`InlineSqlite`), because one indexed row costs microseconds there and a round trip through a
worker thread costs far more CPU than the read itself. A read that finds the file locked for
longer than a moment goes to a worker thread like any other.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import functools
import logging
import sqlite3
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import RowMapping

from adapters.backends.base import Backend, Record
from adapters.backends.options import OptionReader
from adapters.backends.values import RecordLayout
from audit.events import SubjectId
from exchange.db import normalise_url, set_for_session
from exchange.errors import unavailable

log = logging.getLogger(__name__)

# How long PostgreSQL lets one read run (a lock wait included) unless the config says.
DEFAULT_STATEMENT_TIMEOUT_MS = 5000

_TYPE_KEYS = (
    "table",
    "schema",
    "subject_column",
    "query",
    "document_id_column",
    "issued_at_column",
    "valid_until_column",
    "timezone",
    "fields",
)


@dataclass(frozen=True)
class SqlCertificateType:
    """How one certificate type is read: the statement and which result column is what."""

    code: str
    statement: sa.Executable
    layout: RecordLayout  # result columns

    @classmethod
    def from_dict(cls, code: str, d: Mapping[str, Any]) -> SqlCertificateType:
        """Parse `[certificate_types.<code>]`; ValueError names any unknown or missing key."""
        where = f"certificate_types.{code}"
        reader = OptionReader(d, where, _TYPE_KEYS)
        layout = RecordLayout.read(reader, "column")
        if "query" in d:
            if "table" in d or "subject_column" in d or "schema" in d:
                raise ValueError(f"{where}: give either 'query' or 'table' + 'subject_column'")
            statement = _query_statement(reader.text("query"), where)
        else:
            statement = _table_statement(
                table=reader.text("table"),
                schema=reader.optional_text("schema"),
                subject_column=reader.text("subject_column"),
                issued_at_column=layout.issued_at,
                selected=layout.keys,
            )
        return cls(code=code, statement=statement, layout=layout)

    def record(self, row: Mapping[Any, Any]) -> Record:
        """The Record for one result row; ValueError when a configured column is missing."""
        where = f"certificate_types.{self.code}"
        if not row.keys() >= self._columns:
            missing = [name for name in self.layout.keys if name not in row]
            raise ValueError(f"{where}: result has no column {missing}")
        return self.layout.record(row.get, where)

    @functools.cached_property
    def _columns(self) -> frozenset[str]:
        return frozenset(self.layout.keys)


def _table_statement(
    table: str,
    schema: str | None,
    subject_column: str,
    issued_at_column: str,
    selected: tuple[str, ...],
) -> sa.Executable:
    names = dict.fromkeys([*selected, subject_column])  # ordered, without repeats
    source = sa.table(table, *(sa.column(name) for name in names), schema=schema)
    return (
        sa.select(*(source.c[name] for name in dict.fromkeys(selected)))
        .where(
            source.c[subject_column].in_(
                [
                    sa.bindparam("subject_id", type_=sa.String),
                    sa.bindparam("subject_id_lower", type_=sa.String),
                ]
            )
        )
        .order_by(source.c[issued_at_column].desc().nulls_last())
        .limit(1)
    )


def _subject_parameters(subject_id: str) -> dict[str, str]:
    return {"subject_id": subject_id, "subject_id_lower": subject_id.lower()}


def _query_statement(query: str, where: str) -> sa.Executable:
    first_word = query.lstrip().split(None, 1)[0].upper() if query.strip() else ""
    if first_word not in {"SELECT", "WITH"}:
        raise ValueError(f"{where}.query: must be a SELECT statement")
    try:
        return sa.text(query).bindparams(sa.bindparam("subject_id", type_=sa.String))
    except sa.exc.ArgumentError as exc:
        raise ValueError(f"{where}.query: must use the bound parameter :subject_id") from exc


@dataclass(frozen=True)
class SqlBackendConfig:
    """The `[backend]` table (kind = "sql") and the certificate types it serves."""

    url: str
    certificate_types: dict[str, SqlCertificateType]
    statement_timeout_ms: int = DEFAULT_STATEMENT_TIMEOUT_MS

    @classmethod
    def from_dict(cls, d: Mapping[str, Any], base_dir: Path) -> SqlBackendConfig:
        """Parse the options; a relative SQLite path is taken from `base_dir`."""
        reader = OptionReader(d, "backend", ("url", "certificate_types", "statement_timeout_ms"))
        types = reader.table("certificate_types")
        if not types:
            raise ValueError("certificate_types: configure at least one certificate type")
        return cls(
            url=_resolve_sqlite_path(reader.text("url"), base_dir),
            certificate_types={
                code: SqlCertificateType.from_dict(code, spec) for code, spec in types.items()
            },
            statement_timeout_ms=reader.positive_int(
                "statement_timeout_ms", DEFAULT_STATEMENT_TIMEOUT_MS
            ),
        )


def _resolve_sqlite_path(url: str, base_dir: Path) -> str:
    try:
        parsed = sa.make_url(normalise_url(url))
    except sa.exc.ArgumentError as exc:
        raise ValueError("backend.url: not a valid SQLAlchemy database URL") from exc
    database = parsed.database
    if parsed.get_backend_name() != "sqlite" or not database or database == ":memory:":
        return parsed.render_as_string(hide_password=False)
    if database.startswith("file:"):  # SQLite URI filename: leave it as the operator wrote it
        return parsed.render_as_string(hide_password=False)
    resolved = parsed.set(database=str((base_dir / database).resolve()))
    return resolved.render_as_string(hide_password=False)


# How long a read on the event loop waits for a writer's lock before it moves to a thread.
INLINE_BUSY_TIMEOUT_S = 0.02
# Threads reading through the engine at once: more reads wait for one of them.
READ_THREADS = 8


class InlineSqlite:
    """Reads of one SQLite file on the calling thread, with the statements compiled once.

    Results are the sqlite3 module's own values, exactly what the engine would return for
    these untyped columns. Any sqlite3.Error (a lock held too long, a missing table) is the
    caller's cue to read through the engine instead, which reports it properly.
    """

    def __init__(self, path: str, dialect: sa.Dialect) -> None:
        self._path = path
        self._dialect = dialect
        self._connection: sqlite3.Connection | None = None
        self._compiled: dict[int, tuple[str, tuple[str, ...], dict[str, Any]]] = {}

    def first_row(self, statement: sa.Executable, subject_id: str) -> dict[str, Any] | None:
        """The statement's first row as a column -> value mapping, or None."""
        sql, positions, defaults = self._compile(statement)
        values = {**defaults, **_subject_parameters(subject_id)}
        cursor = self._connect().execute(sql, tuple(values[name] for name in positions))
        try:
            row = cursor.fetchone()
        finally:
            cursor.close()  # ends the read transaction: no WAL snapshot stays pinned
        if row is None:
            return None
        return dict(zip((c[0] for c in cursor.description), row, strict=True))

    def close(self) -> None:
        """Close the connection (it is reopened by the next read)."""
        connection, self._connection = self._connection, None
        if connection is not None:
            with contextlib.suppress(sqlite3.Error):
                connection.close()

    def _connect(self) -> sqlite3.Connection:
        if self._connection is None:
            connection = sqlite3.connect(
                Path(self._path).as_uri() + "?mode=ro",  # never creates a missing file
                uri=True,
                timeout=INLINE_BUSY_TIMEOUT_S,
                isolation_level=None,  # autocommit: each read sees the latest commit
                check_same_thread=False,  # only ever used synchronously, from the event loop
            )
            connection.execute("PRAGMA query_only = ON")
            self._connection = connection
        return self._connection

    def _compile(self, statement: sa.Executable) -> tuple[str, tuple[str, ...], dict[str, Any]]:
        found = self._compiled.get(id(statement))
        if found is None:
            compiled = statement.compile(dialect=self._dialect)  # type: ignore[attr-defined]
            found = (str(compiled), tuple(compiled.positiontup or ()), dict(compiled.params))
            self._compiled[id(statement)] = found
        return found


def _sqlite_file(engine: sa.Engine) -> str | None:
    database = engine.url.database
    if engine.dialect.name != "sqlite" or not database or database == ":memory:":
        return None
    if database.startswith("file:"):  # a URI filename with options: leave it to the engine
        return None
    return database


class SqlBackend(Backend):
    """Records from SQL tables or queries, one engine per node."""

    def __init__(self, config: SqlBackendConfig) -> None:
        self.config = config
        # hide_parameters: a failed query must not quote the subject id into the logs.
        self.engine = sa.create_engine(
            config.url, pool_pre_ping=True, hide_parameters=True, pool_size=READ_THREADS
        )
        if self.engine.dialect.name == "postgresql":
            timeout = f"SET statement_timeout = {int(config.statement_timeout_ms)}"
            sa.event.listen(
                self.engine, "connect", lambda dbapi, _: set_for_session(dbapi, timeout)
            )
        self._reads = concurrent.futures.ThreadPoolExecutor(READ_THREADS, "sql-backend")
        path = _sqlite_file(self.engine)
        if path is not None and not Path(path).is_file():
            # SQLite would create it, empty, and every fetch would fail on a missing table.
            raise ValueError(f"backend.url: no SQLite database at {path}")
        self._inline = InlineSqlite(path, self.engine.dialect) if path else None

    @classmethod
    def from_options(cls, options: Mapping[str, Any], base_dir: Path) -> SqlBackend:
        """Build from the `[backend]` options plus `certificate_types`."""
        return cls(SqlBackendConfig.from_dict(options, base_dir))

    def served_types(self) -> dict[str, tuple[str, ...]]:
        """Each configured certificate type and its field names."""
        return {
            code: tuple(spec.layout.fields) for code, spec in self.config.certificate_types.items()
        }

    async def fetch(self, certificate_type: str, subject: SubjectId) -> Record | None:
        """The subject's record of that type (from a worker thread, but see InlineSqlite)."""
        spec = self.config.certificate_types[certificate_type]
        if self._inline is not None:
            try:
                found = self._inline.first_row(spec.statement, subject.id)
            except sqlite3.Error:
                self._inline.close()  # the engine's read below says what is wrong, if anything
            else:
                return None if found is None else spec.record(found)
        loop = asyncio.get_running_loop()
        try:
            row = await loop.run_in_executor(
                self._reads, self._first_row, spec.statement, subject.id
            )
        except sa.exc.OperationalError as exc:
            # Connection refused, database locked or gone, a read over the statement
            # timeout: the hub may try another replica.
            log.error("database error reading %s: %s", certificate_type, exc)
            raise unavailable("the department's record store is unavailable") from exc
        return None if row is None else spec.record(row)

    def _first_row(self, statement: sa.Executable, subject_id: str) -> RowMapping | None:
        with self.engine.connect() as connection:
            result = connection.execute(statement, _subject_parameters(subject_id))
            return result.mappings().first()

    async def close(self) -> None:
        """Close the engine's pooled connections; reads still running are left to end (by
        the statement timeout) in their own threads."""
        if self._inline is not None:
            self._inline.close()
        self._reads.shutdown(wait=False, cancel_futures=True)
        await asyncio.to_thread(self.engine.dispose)
