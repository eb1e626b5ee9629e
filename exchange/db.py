"""The database the hub keeps its registry and audit log in: engine set-up and migrations.

SQLite (a file, WAL) is the embedded default; PostgreSQL is selected by URL. The schema is
owned by Alembic migrations in exchange/migrations; `upgrade()` brings any database to head.
Tables are declared on the one `metadata` below by exchange.registry.tables and audit.tables.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import sqlalchemy as sa
from alembic import command
from alembic.config import Config
from sqlalchemy import event

metadata = sa.MetaData(
    naming_convention={
        "ix": "ix_%(column_0_label)s",
        "uq": "uq_%(table_name)s_%(column_0_name)s",
        "ck": "ck_%(table_name)s_%(constraint_name)s",
        "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
        "pk": "pk_%(table_name)s",
    }
)

MIGRATIONS = Path(__file__).resolve().parent / "migrations"


def normalise_url(url: str) -> str:
    """Let users write postgresql://… and get the psycopg 3 driver we ship with."""
    if url.startswith("postgresql://") or url.startswith("postgres://"):
        return "postgresql+psycopg://" + url.split("://", 1)[1]
    return url


# How long a SQLite connection waits for another's write lock before "database is locked".
SQLITE_LOCK_WAIT_S = 30
SQLITE_WAL_SIZE_LIMIT = 64 << 20  # bytes


def make_engine(url: str, **kwargs: Any) -> sa.Engine:
    """An engine for `url`; SQLite files get WAL, full fsync on commit and a busy timeout."""
    url = normalise_url(url)
    # Errors would otherwise quote bound parameters (subject ids among them) into logs.
    kwargs.setdefault("hide_parameters", True)
    if url.startswith("sqlite"):
        engine = sa.create_engine(url, connect_args={"timeout": SQLITE_LOCK_WAIT_S}, **kwargs)
        event.listen(engine, "connect", _sqlite_pragmas)
        return engine
    kwargs.setdefault("pool_size", 10)
    kwargs.setdefault("max_overflow", 10)
    kwargs.setdefault("pool_pre_ping", True)
    engine = sa.create_engine(url, **kwargs)
    if engine.dialect.name == "postgresql":
        event.listen(engine, "connect", _postgres_in_utc)
    return engine


def _postgres_in_utc(dbapi_connection: Any, _record: Any) -> None:
    """Every session in UTC, whatever the server's or the role's TimeZone: times are stored
    with their zone, but read back in the session's, and a grant valid until 9999-12-31
    (UTC) is in the year 10000 east of UTC, which no driver can read."""
    set_for_session(dbapi_connection, "SET TIME ZONE 'UTC'")


def set_for_session(dbapi_connection: Any, statement: str) -> None:
    """Run `statement` (a SET) on a new DB-API connection, outside any transaction: inside
    one, the rollback that returns a connection to the pool would undo it."""
    autocommit = dbapi_connection.autocommit
    dbapi_connection.autocommit = True
    cursor = dbapi_connection.cursor()
    try:
        cursor.execute(statement)
    finally:
        cursor.close()
        dbapi_connection.autocommit = autocommit


def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    cursor = dbapi_connection.cursor()
    # Takes effect only in a new, empty file (so before journal_mode): 16 KiB pages quarter
    # the WAL frames — and syscalls — every commit writes; audit entries are ~1 KiB each.
    cursor.execute("PRAGMA page_size=16384")
    cursor.execute("PRAGMA journal_mode=WAL")
    # FULL: a commit is on disk before it returns; the audit log promises durability.
    cursor.execute("PRAGMA synchronous=FULL")
    cursor.execute("PRAGMA foreign_keys=ON")
    # Whichever connection starts the WAL over cuts a file grown in a spike (a long export
    # holding it, say) back to this size.
    cursor.execute(f"PRAGMA journal_size_limit={SQLITE_WAL_SIZE_LIMIT}")
    cursor.close()


def alembic_config(engine: sa.Engine) -> Config:
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    config.attributes["engine"] = engine
    return config


def upgrade(engine: sa.Engine) -> None:
    """Bring the schema to the newest migration (idempotent)."""
    command.upgrade(alembic_config(engine), "head")
