"""The sequencer: integrates appended entries into the Merkle tree and signs checkpoints.

Entries become durable (and get their receipts) at append time; integration follows in
batches, as Trillian's sequencer does. A round reads the leaf hashes appended since the
latest checkpoint, extends the in-memory frontier, stores every complete subtree of a tile
or more, copies the new entries' query columns into the indexed audit_query_index, and
signs a checkpoint over the new size — all in one transaction that only commits if no
other sequencer moved the latest checkpoint meanwhile. On PostgreSQL the
replicas also elect one sequencer per round with a session advisory lock; the others skip.
"""

from __future__ import annotations

import contextlib
import datetime as dt
from collections.abc import Iterator
from typing import Any

import sqlalchemy as sa

from audit import merkle, store, tree
from audit.entry import format_time
from audit.keys import LogKeys
from audit.signing import sign_checkpoint
from audit.tables import audit_checkpoints
from exchange.v1 import audit_pb2

# Leaves integrated per transaction, so a long backlog never needs all its hashes in memory.
ROUND_LIMIT = 1 << 20


class Sequencer:
    """Integrates entries and signs checkpoints for one log (blocking; run off the loop)."""

    def __init__(self, engine: sa.Engine, keys: LogKeys) -> None:
        self.engine = engine
        self.keys = keys
        self.frontier: merkle.Frontier | None = None  # at the latest checkpoint's size

    def load(self) -> None:
        """Re-derive the frontier from the stored tree (at start)."""
        with self.engine.connect() as conn:
            self.frontier = tree.frontier_at(conn, store.signed_size(conn))

    def run(self, *, fresh: bool) -> audit_pb2.SignedCheckpoint | None:
        """Integrate everything appended so far and sign a checkpoint if the tree grew.

        fresh=True waits for another replica's round to finish and always returns the latest
        checkpoint (signing one over the empty tree if there is none); fresh=False skips the
        round when another replica is sequencing, and returns None when nothing was signed.
        """
        with self._elected(wait=fresh) as elected:
            if not elected:
                return None
            signed = None
            while True:
                grown = self._round()
                if grown is None:
                    break
                signed = grown
            if fresh:
                return signed or self._latest_or_empty()
            return signed

    def checkpoint_at(self, tree_size: int) -> audit_pb2.SignedCheckpoint:
        """A signed checkpoint of exactly `tree_size` (within the sequenced part), signing
        and storing one for that size if there is none yet."""
        with self.engine.connect() as conn:
            row = store.checkpoint_at(conn, tree_size)
            if row is not None:
                return signed_from_row(row)
            root = tree.range_hashes(conn, [(0, tree_size)])[0] if tree_size else merkle.EMPTY_ROOT
            signed = sign_checkpoint(self.keys, tree_size, root, dt.datetime.now(dt.UTC))
            conn.rollback()
        try:
            with self.engine.begin() as conn:
                _insert_checkpoint(conn, signed, root, tree_size)
        except sa.exc.IntegrityError:  # another replica signed this size first: use theirs
            with self.engine.connect() as conn:
                row = store.checkpoint_at(conn, tree_size)
            if row is None:
                raise
            return signed_from_row(row)
        return signed

    def _round(self) -> audit_pb2.SignedCheckpoint | None:
        with self.engine.connect() as conn:
            base = store.signed_size(conn)
            end = min(store.entry_count(conn), base + ROUND_LIMIT)
            if end == base:
                return None
            frontier = self.frontier
            if frontier is None or frontier.size != base:
                frontier = tree.frontier_at(conn, base)
            hashes = store.leaf_hashes(conn, base, end)
            conn.rollback()
        if len(hashes) != end - base:
            raise RuntimeError(f"audit log: entries between {base} and {end} are missing")
        grown = frontier.copy()
        nodes: list[tuple[int, int, bytes]] = []
        for digest in hashes:
            nodes.extend(grown.append_completing(digest, tree.TILE_LEVEL))
        root = grown.root()
        signed = sign_checkpoint(self.keys, end, root, dt.datetime.now(dt.UTC))
        with self.engine.begin() as conn:
            store.begin_immediate(conn)
            if store.signed_size(conn) != base:
                self.frontier = None  # another sequencer won this round; start over from its
                return None
            store.insert_tree_nodes(conn, nodes)
            store.index_entries(conn, base, end)
            _insert_checkpoint(conn, signed, root, end)
        self.frontier = grown
        return signed

    def latest(self) -> audit_pb2.SignedCheckpoint | None:
        """The stored checkpoint of the largest tree, if any was signed."""
        with self.engine.connect() as conn:
            latest = store.latest_checkpoint(conn)
        return signed_from_row(latest) if latest is not None else None

    def _latest_or_empty(self) -> audit_pb2.SignedCheckpoint:
        return self.latest() or self.checkpoint_at(0)

    @contextlib.contextmanager
    def _elected(self, *, wait: bool) -> Iterator[bool]:
        if self.engine.dialect.name == "sqlite":
            yield True  # BEGIN IMMEDIATE and the size check in _round() suffice
            return
        with self.engine.connect() as conn:
            conn.execution_options(isolation_level="AUTOCOMMIT")
            function = sa.func.pg_advisory_lock if wait else sa.func.pg_try_advisory_lock
            acquired = conn.execute(
                sa.select(function(store.SEQUENCER_LOCK, store.SCHEMA))
            ).scalar()
            if wait or acquired:
                try:
                    yield True
                finally:
                    conn.execute(
                        sa.select(sa.func.pg_advisory_unlock(store.SEQUENCER_LOCK, store.SCHEMA))
                    )
            else:
                yield False


def signed_from_row(row: sa.Row[Any]) -> audit_pb2.SignedCheckpoint:
    """The SignedCheckpoint stored in an audit_checkpoints row."""
    return audit_pb2.SignedCheckpoint(
        checkpoint=row.checkpoint,
        key_id=row.key_id,
        algorithm="Ed25519",
        signature=row.signature,
    )


def _insert_checkpoint(
    conn: sa.Connection, signed: audit_pb2.SignedCheckpoint, root: bytes, tree_size: int
) -> None:
    checkpoint = audit_pb2.Checkpoint.FromString(signed.checkpoint)
    conn.execute(
        sa.insert(audit_checkpoints).values(
            tree_size=tree_size,
            root_hash=root,
            time=format_time(checkpoint.time.ToDatetime(dt.UTC)),
            checkpoint=signed.checkpoint,
            key_id=signed.key_id,
            signature=signed.signature,
        )
    )
