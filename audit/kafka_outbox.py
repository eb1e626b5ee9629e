"""The Kafka relay's side of the database: entries to publish, its offset, its leadership.

The log is its own transactional outbox. What the relay publishes is each entry's leaf, and
`audit_entries` already holds exactly that, written once, under the append lock, so its
indexes are gapless and become visible in index order — everything a separate outbox table
would give, without writing every entry twice or pruning the copies afterwards. A relay
added to a hub that never had one starts at index 0 and publishes the whole log. A relay
keeps in `audit_relay_offsets` the next index it has to publish and moves it only after the
broker acknowledged everything before it; a restarted relay reads it back and resumes there.

Only one relay per database may publish at a time, or two would send the same entries.
On PostgreSQL the leader holds a session advisory lock on a dedicated connection; on SQLite
(several hub processes on one machine share the file) it holds an exclusive `flock` on a
file next to the database. All functions here are blocking; the relay calls them from its
own thread.
"""

from __future__ import annotations

import fcntl
import hashlib
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO

import sqlalchemy as sa

from audit.store import SCHEMA
from audit.tables import audit_entries, audit_relay_offsets

log = logging.getLogger(__name__)

# PostgreSQL advisory lock held by the publishing relay: (RELAY_LOCK, hash of the schema), as
# the audit log's own locks (audit.store: APPEND_LOCK, SEQUENCER_LOCK).
RELAY_LOCK = 0x0A0D17_03

_RELAY_NAME_LENGTH = 64


def relay_name(topic: str) -> str:
    """The offset row of the relay publishing to `topic` (at most 64 characters)."""
    name = f"kafka:{topic}"
    if len(name) <= _RELAY_NAME_LENGTH:
        return name
    return f"kafka:{hashlib.sha256(topic.encode()).hexdigest()[:32]}"


@dataclass(frozen=True, slots=True)
class OutboxRow:
    index: int
    leaf: bytes


def published_offset(engine: sa.Engine, topic: str) -> int:
    """How many entries the relay to `topic` has published: every index below this one."""
    select = sa.select(audit_relay_offsets.c.next_index).where(
        audit_relay_offsets.c.relay == relay_name(topic)
    )
    with engine.connect() as conn:
        value = conn.execute(select).scalar_one_or_none()
    return 0 if value is None else int(value)


def start_offset(engine: sa.Engine, relay: str) -> int:
    """The next index `relay` has to publish; creates its offset row at 0 the first time."""
    select = sa.select(audit_relay_offsets.c.next_index).where(audit_relay_offsets.c.relay == relay)
    with engine.connect() as conn:
        value = conn.execute(select).scalar_one_or_none()
        if value is not None:
            return int(value)
        try:
            conn.execute(audit_relay_offsets.insert().values(relay=relay, next_index=0))
            conn.commit()
        except sa.exc.IntegrityError:
            conn.rollback()  # another relay created it a moment ago
            return int(conn.execute(select).scalar_one())
    return 0


def unpublished(engine: sa.Engine, start: int, limit: int) -> list[OutboxRow]:
    """Up to `limit` entries from index `start` on, in index order."""
    with engine.connect() as conn:
        rows = conn.execute(
            sa.select(audit_entries.c.idx, audit_entries.c.leaf)
            .where(audit_entries.c.idx >= start)
            .order_by(audit_entries.c.idx)
            .limit(limit)
        ).all()
    return [OutboxRow(int(idx), bytes(payload)) for idx, payload in rows]


def advance(engine: sa.Engine, relay: str, expected: int, new: int) -> bool:
    """Move `relay`'s offset from `expected` to `new`; False if someone else moved it."""
    with engine.begin() as conn:
        moved = conn.execute(
            audit_relay_offsets.update()
            .where(audit_relay_offsets.c.relay == relay)
            .where(audit_relay_offsets.c.next_index == expected)
            .values(next_index=new)
        ).rowcount
    return bool(moved == 1)


def contiguous(rows: Sequence[OutboxRow], start: int) -> list[OutboxRow]:
    """The run of `rows` that follows `start` without a gap.

    The log never leaves gaps, so a leading one means entries were deleted from the log by
    hand (the log's verification will name them): they cannot be published any more, and
    waiting for them would stall the stream.
    """
    if not rows:
        return []
    if rows[0].index != start:
        log.warning(
            "audit log has no entries %d..%d (deleted?); publishing from %d",
            start,
            rows[0].index - 1,
            rows[0].index,
        )
    run = [rows[0]]
    for row in rows[1:]:
        if row.index != run[-1].index + 1:
            break
        run.append(row)
    return run


class Leadership:
    """Whether this relay is the one that publishes; try `acquire()` again while it is not."""

    def __init__(self, engine: sa.Engine) -> None:
        self._engine = engine
        self._connection: sa.Connection | None = None
        self._lock_file: IO[bytes] | None = None

    def acquire(self) -> bool:
        """True while this relay holds the lock (taking it if it is free)."""
        if self._engine.dialect.name == "postgresql":
            return self._acquire_advisory()
        if self._engine.dialect.name == "sqlite":
            return self._acquire_file()
        return True

    def release(self) -> None:
        """Give the lock up (closing the connection or file that holds it)."""
        connection, self._connection = self._connection, None
        if connection is not None:
            try:
                connection.execute(sa.select(sa.func.pg_advisory_unlock(RELAY_LOCK, SCHEMA)))
                connection.commit()
            except sa.exc.DBAPIError:
                pass  # the session is gone, and its lock with it
            connection.close()
        lock_file, self._lock_file = self._lock_file, None
        if lock_file is not None:
            lock_file.close()

    def _acquire_advisory(self) -> bool:
        if self._connection is not None:
            try:
                # The lock lives as long as the session; a live session still holds it.
                self._connection.execute(sa.select(1))
                self._connection.commit()
                return True
            except sa.exc.DBAPIError:
                log.warning("kafka relay lost its database session and with it the relay lock")
                self._connection.invalidate()
                self.release()
        connection = self._engine.connect()
        try:
            held = connection.execute(
                sa.select(sa.func.pg_try_advisory_lock(RELAY_LOCK, SCHEMA))
            ).scalar_one()
            connection.commit()
        except BaseException:
            connection.close()
            raise
        if held:
            self._connection = connection
            return True
        connection.close()
        return False

    def _acquire_file(self) -> bool:
        if self._lock_file is not None:
            return True
        database = self._engine.url.database
        if not database or database == ":memory:":
            return True  # a private database: no other process can relay from it
        lock_file = Path(database).with_name(Path(database).name + ".kafka-relay.lock").open("ab")
        try:
            fcntl.flock(lock_file.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            lock_file.close()
            return False
        self._lock_file = lock_file
        return True
