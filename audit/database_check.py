"""Verification of the stored log itself, for an operator or auditor with database access.

Everything verify_export() checks, plus what only the tables can get wrong: the query
columns copied next to each leaf (in audit_entries and audit_query_index) must agree with the
leaf, or queries would find the wrong entries; stored checkpoints beyond the last entry
mean entries were deleted from the end.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import sqlalchemy as sa

from audit import store
from audit.entry import QUERY_COLUMNS, query_text
from audit.sequencer import signed_from_row
from audit.tables import audit_entries, audit_query_index
from audit.verify import LogVerifier, VerificationError, VerifyResult
from exchange.v1 import audit_pb2


def verify_database(engine: sa.Engine, public_key_raw: bytes) -> VerifyResult:
    """Verify the stored log itself: every entry as verify_export() does, its query columns
    (in audit_entries and audit_query_index) against the entry, every stored checkpoint
    against the entries below it.

    Entries beyond the latest checkpoint are checked one by one (they are not signed yet).
    """
    verifier = LogVerifier(public_key_raw)
    with engine.connect() as conn:
        checkpoints = [signed_from_row(row) for row in store.checkpoints_between(conn, -1, 2**62)]
    sizes = [audit_pb2.Checkpoint.FromString(c.checkpoint).tree_size for c in checkpoints]
    pending = list(zip(sizes, checkpoints, strict=True))
    pending.reverse()  # pop() from the end gives the smallest size
    while pending and pending[-1][0] == 0:
        verifier.checkpoint(pending.pop()[1])
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
        verifier.entry(index, leaf, bytes(row.leaf_hash), inner_index)
        while pending and pending[-1][0] == verifier.frontier.size:
            verifier.checkpoint(pending.pop()[1])
    if pending:
        size = pending[-1][0]
        raise VerificationError(
            verifier.frontier.size,
            f"a checkpoint covers {size} entries but the log ends at entry "
            f"{verifier.frontier.size - 1}: entries were deleted",
        )
    _check_query_index(engine, verifier.checked_size)
    return VerifyResult(
        entries=verifier.entries,
        first_index=0,
        tree_size=verifier.checked_size,
        root=verifier.root,
    )


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
        beyond = conn.execute(
            sa.select(sa.func.min(index.c.idx)).where(index.c.idx >= indexed_size)
        ).scalar()
    if differing is not None:
        raise VerificationError(
            int(differing), "its row in audit_query_index is missing or differs from the entry"
        )
    if beyond is not None:
        raise VerificationError(
            int(beyond), "audit_query_index has a row no checkpoint covers (inserted)"
        )


def _stored_rows(engine: sa.Engine, chunk: int = 5000) -> Iterator[sa.Row[Any]]:
    columns = [audit_entries.c[name] for name in ("idx", "leaf", "leaf_hash", *QUERY_COLUMNS)]
    position = -1
    while True:
        with engine.connect() as conn:
            rows = conn.execute(
                sa.select(*columns)
                .where(audit_entries.c.idx > position)
                .order_by(audit_entries.c.idx)
                .limit(chunk)
            ).all()
        if not rows:
            return
        yield from rows
        position = int(rows[-1].idx)
