"""Verification of the stored log itself, for an operator or auditor with database access.

Everything verify_export() checks, plus what only the tables can get wrong: the query
columns copied next to each leaf (in audit_entries and audit_query_index) must agree with the
leaf, or queries would find the wrong entries; stored checkpoints beyond the last entry
mean entries were deleted from the end; and audit_tree_nodes must hold exactly the complete
subtrees of the verified entries, since proofs, on-demand checkpoints and a restarted
sequencer take their hashes from it instead of from the leaves.

Entries, checkpoints and tree nodes are all read a chunk at a time, so memory stays bounded
however long the log.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from typing import Any, NoReturn

import sqlalchemy as sa

from audit import merkle, store
from audit.entry import QUERY_COLUMNS, query_text
from audit.sequencer import signed_from_row
from audit.tables import audit_entries, audit_query_index, audit_tree_nodes
from audit.tree import TILE, TILE_LEVEL
from audit.verify import LogVerifier, VerificationError, VerifyResult
from exchange.v1 import audit_pb2

# Computed tree nodes looked up per query (also whenever a checkpoint verifies).
NODE_BATCH = 1000


def verify_database(engine: sa.Engine, public_key_raw: bytes) -> VerifyResult:
    """Verify the stored log itself: every entry as verify_export() does, its query columns
    (in audit_entries and audit_query_index) against the entry, every stored checkpoint
    against the entries below it, and every stored tree node against those entries.

    Entries beyond the latest checkpoint are checked one by one (they are not signed yet).
    """
    verifier = LogVerifier(public_key_raw)
    with engine.connect() as conn:
        signed_size = store.signed_size(conn)
    # Only checkpoints already there: all their entries are stored, so a sequencer round
    # committing during the check cannot look like entries deleted from the end.
    checkpoints = _Checkpoints(engine, signed_size)
    nodes = _TreeNodes(engine, signed_size)
    checkpoints.verify_due(verifier, nodes)
    for row in _stored_rows(engine):
        index = int(row.idx)
        leaf = bytes(row.leaf)
        try:
            entry = json.loads(leaf)
            inner_index = int(entry["index"])
        except (ValueError, KeyError, TypeError):
            raise VerificationError(index, "the stored entry is not an entry object") from None
        for column in QUERY_COLUMNS:
            if getattr(row, column) != _as_column(entry.get(column)):
                raise VerificationError(
                    index,
                    f"column {column} holds {getattr(row, column)!r} but the entry says "
                    f"{entry.get(column)!r} (edited in the table)",
                )
        frontier = verifier.frontier
        # The entry completing a tile: the frontier's last TILE_LEVEL hashes are then the
        # subtrees of 128, 64, …, 1 leaves that it merges with (one per set bit, smallest last).
        tail = frontier.hashes[-TILE_LEVEL:] if frontier.size % TILE == TILE - 1 else None
        leaf_hash = bytes(row.leaf_hash)
        verifier.entry(index, leaf, leaf_hash, inner_index)
        if tail is not None:
            nodes.tile_completed(tail, leaf_hash)
        checkpoints.verify_due(verifier, nodes)
    if checkpoints.following is not None:
        size = checkpoints.following[0]
        raise VerificationError(
            verifier.frontier.size,
            f"a checkpoint covers {size} entries but the log ends at entry "
            f"{verifier.frontier.size - 1}: entries were deleted",
        )
    _check_query_index(engine, verifier.checked_size)
    nodes.finish(verifier.checked_size)
    return VerifyResult(
        entries=verifier.entries,
        first_index=0,
        tree_size=verifier.checked_size,
        root=verifier.root,
    )


class _Checkpoints:
    """The stored checkpoints up to `signed_size`, smallest first, read in chunks."""

    def __init__(self, engine: sa.Engine, signed_size: int) -> None:
        self.rows = store.iter_checkpoints(engine, -1, signed_size)
        self.following = self._next()  # (the tree size it signs, the checkpoint)

    def _next(self) -> tuple[int, audit_pb2.SignedCheckpoint] | None:
        row = next(self.rows, None)
        if row is None:
            return None
        signed = signed_from_row(row)
        return audit_pb2.Checkpoint.FromString(signed.checkpoint).tree_size, signed

    def verify_due(self, verifier: LogVerifier, nodes: _TreeNodes) -> None:
        """Verify the checkpoints of the tree the verifier holds now, then the tree nodes
        they cover."""
        while self.following is not None and self.following[0] == verifier.frontier.size:
            verifier.checkpoint(self.following[1])
            nodes.covered(verifier.checked_size)
            self.following = self._next()


class _TreeNodes:
    """Compares audit_tree_nodes with the complete subtrees of TILE leaves or more that the
    verified leaf hashes make, as the sequencer stored them: a node is looked up once a tile
    completes it, and a bad one reported once a verified checkpoint covers its leaves (before
    that, a forged leaf hash would be blamed on the node instead of localised by checkpoints).
    """

    def __init__(self, engine: sa.Engine, signed_size: int) -> None:
        self.engine = engine
        self.signed_size = signed_size  # the sequencer stored every complete subtree below it
        self.tiles = merkle.Frontier()  # over tile hashes: its level l is tree level TILE_LEVEL + l
        self.waiting: list[tuple[int, int, bytes]] = []  # (level, position, hash) to look up
        self.bad: tuple[int, int, bool] | None = None  # the first wrong: level, position, missing

    def tile_completed(self, tail: list[bytes], last_leaf: bytes) -> None:
        """A tile ends with `last_leaf`; `tail` is the frontier just before it (see above)."""
        digest = last_leaf
        for left in reversed(tail):
            digest = merkle.node_hash(left, digest)
        completed = [(TILE_LEVEL, self.tiles.size, digest)]
        completed.extend(
            (TILE_LEVEL + level, position, node)
            for level, position, node in self.tiles.append_completing(digest, 1)
        )
        self.waiting.extend(
            node for node in completed if (node[1] + 1) << node[0] <= self.signed_size
        )
        if len(self.waiting) >= NODE_BATCH:
            self._look_up()

    def covered(self, checked_size: int) -> None:
        """A checkpoint of `checked_size` verified: report a bad node below it."""
        self._look_up()
        if self.bad is not None and (self.bad[1] + 1) << self.bad[0] <= checked_size:
            self._fail(*self.bad)

    def finish(self, checked_size: int) -> None:
        """Every entry was read: report a bad node, or one the sequencer never stores."""
        self._look_up()
        if self.bad is not None:
            self._fail(*self.bad)
        nodes = audit_tree_nodes.c

        def first_stray(conn: sa.Connection, size: int) -> Any:
            expected = [
                sa.and_(nodes.level == level, nodes.position >= 0, nodes.position < size >> level)
                for level in range(TILE_LEVEL, size.bit_length())
            ]
            return conn.execute(
                sa.select(nodes.level, nodes.position)
                .where(sa.not_(sa.or_(sa.false(), *expected)))
                .order_by(nodes.level, nodes.position)
                .limit(1)
            ).first()

        stray = _first_beyond_what_is_signed(self.engine, checked_size, first_stray)
        if stray is not None:
            level, position = int(stray.level), int(stray.position)
            reason = (
                f"beyond the {checked_size} entries verified checkpoints cover (inserted, or "
                "the checkpoint covering it deleted)"
                if level >= TILE_LEVEL and position >= 0
                else "a node the sequencer never stores (inserted)"
            )
            raise VerificationError(
                None, f"audit_tree_nodes has {_node_name(level, position)}: {reason}"
            )

    def _look_up(self) -> None:
        if not self.waiting:
            return
        keys = [(level, position) for level, position, _ in self.waiting]
        with self.engine.connect() as conn:
            stored = store.tree_nodes(conn, keys)
        for level, position, digest in self.waiting:
            found = stored.get((level, position))
            if found != digest and self.bad is None:
                self.bad = (level, position, found is None)
        self.waiting.clear()

    @staticmethod
    def _fail(level: int, position: int, missing: bool) -> NoReturn:
        name = _node_name(level, position)
        raise VerificationError(
            None,
            f"audit_tree_nodes: {name} is missing (deleted): proofs that need it fail"
            if missing
            else f"audit_tree_nodes: {name} differs from the hash of those entries (edited): "
            "proofs and checkpoints computed from it are wrong",
        )


def _node_name(level: int, position: int) -> str:
    if 0 <= level < 64 and position >= 0:
        first = position << level
        last = first + (1 << level) - 1
        return f"the node (level {level}, position {position}) for entries {first}..{last}"
    return f"the node (level {level}, position {position})"


def _as_column(value: object) -> object:
    return query_text(value) if isinstance(value, str) else value


def _check_query_index(engine: sa.Engine, indexed_size: int) -> None:
    """audit_query_index must hold exactly the query columns of entries [0, indexed_size)."""
    entries, index = audit_entries, audit_query_index
    with engine.connect() as conn:
        differing = conn.execute(
            sa.select(sa.func.min(entries.c.idx))
            .select_from(entries.outerjoin(index, index.c.idx == entries.c.idx))
            .where(
                entries.c.idx < indexed_size,
                sa.or_(
                    index.c.idx.is_(None),
                    *(index.c[name] != entries.c[name] for name in QUERY_COLUMNS),
                ),
            )
        ).scalar()

    def first_beyond(conn: sa.Connection, size: int) -> Any:
        return conn.execute(
            sa.select(index.c.idx).where(index.c.idx >= size).order_by(index.c.idx).limit(1)
        ).first()

    beyond = _first_beyond_what_is_signed(engine, indexed_size, first_beyond)
    if differing is not None:
        raise VerificationError(
            int(differing), "its row in audit_query_index is missing or differs from the entry"
        )
    if beyond is not None:
        raise VerificationError(
            int(beyond.idx), "audit_query_index has a row no checkpoint covers (inserted)"
        )


def _first_beyond_what_is_signed(
    engine: sa.Engine,
    checked_size: int,
    first_beyond: Callable[[sa.Connection, int], Any],
) -> Any:
    """The first row (or None) `first_beyond(conn, size)` finds past what the stored
    checkpoints cover.

    That is `checked_size`, the tree this check verified, unless the hub's sequencer signed
    more while it ran: a round stores its tree nodes, index rows and checkpoint in one
    transaction, so a row it stored meanwhile is covered by a checkpoint read after it. A
    row still beyond the signed tree once that stops growing was put there by someone else.
    """
    size = checked_size
    while True:
        with engine.connect() as conn:
            found = first_beyond(conn, size)
            if found is None:
                return None
            signed_now = max(size, store.signed_size(conn))
        if signed_now == size:
            return found
        size = signed_now


def _stored_rows(engine: sa.Engine) -> Iterator[sa.Row[Any]]:
    columns = [audit_entries.c[name] for name in ("idx", "leaf", "leaf_hash", *QUERY_COLUMNS)]
    return store.in_chunks(engine, sa.select(*columns), audit_entries.c.idx, -1, 5000)
