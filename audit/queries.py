"""Finding entries: the filters auditors use.

Results come newest first (descending index) unless `oldest_first`; paging continues below
(or above) the last index returned. Entries a checkpoint covers are found through
audit_query_index, where each filter column is indexed together with idx (a page is one
index range scan); the newer ones, at most one checkpoint interval of them, are filtered
straight from audit_entries. The two parts are asked in the query's order, the second only
when the first did not fill the page.
"""

from __future__ import annotations

from dataclasses import dataclass

import sqlalchemy as sa

from audit.entry import query_text
from audit.tables import audit_entries, audit_query_index


@dataclass(frozen=True)
class EntryQuery:
    """Conditions an entry must meet; empty strings and None mean "any"."""

    subject_ref: str = ""
    requester_department: str = ""
    issuer: str = ""
    certificate_type: str = ""
    purpose: str = ""
    outcome: str = ""  # Outcome value: "granted", "refused", "failed"
    event: str = ""  # EventKind value: "lookup", ...
    since: str = ""  # RFC 3339 UTC text as stored, inclusive
    until: str = ""  # exclusive
    after_index: int | None = None  # continue a page: indexes beyond this one only
    oldest_first: bool = False
    limit: int = 100


@dataclass(frozen=True, slots=True)
class StoredEntry:
    """An entry as stored: index, leaf bytes, leaf hash."""

    index: int
    leaf: bytes
    leaf_hash: bytes


def find_entries(conn: sa.Connection, query: EntryQuery, indexed_upto: int) -> list[StoredEntry]:
    """Entries matching `query`, at most query.limit of them, in the query's order;
    audit_query_index covers exactly the entries below `indexed_upto`."""
    parts = [_indexed_part, _recent_part]
    if not query.oldest_first:
        parts.reverse()
    found: list[StoredEntry] = []
    for part in parts:
        statement = part(query, indexed_upto).limit(query.limit - len(found))
        found.extend(
            StoredEntry(int(row[0]), bytes(row[1]), bytes(row[2]))
            for row in conn.execute(statement)
        )
        if len(found) >= query.limit:
            break
    return found


def _indexed_part(query: EntryQuery, indexed_upto: int) -> sa.Select[int, bytes, bytes]:
    entries, index = audit_entries, audit_query_index
    return (
        sa.select(entries.c.idx, entries.c.leaf, entries.c.leaf_hash)
        .join(index, index.c.idx == entries.c.idx)
        .where(index.c.idx < indexed_upto, *_conditions(index, query))
        .order_by(index.c.idx.asc() if query.oldest_first else index.c.idx.desc())
    )


def _recent_part(query: EntryQuery, indexed_upto: int) -> sa.Select[int, bytes, bytes]:
    entries = audit_entries
    return (
        sa.select(entries.c.idx, entries.c.leaf, entries.c.leaf_hash)
        .where(entries.c.idx >= indexed_upto, *_conditions(entries, query))
        .order_by(entries.c.idx.asc() if query.oldest_first else entries.c.idx.desc())
    )


def _conditions(table: sa.Table, query: EntryQuery) -> list[sa.ColumnElement[bool]]:
    conditions: list[sa.ColumnElement[bool]] = []
    for name in (
        "subject_ref",
        "requester_department",
        "issuer",
        "certificate_type",
        "purpose",
        "outcome",
        "event",
    ):
        value = getattr(query, name)
        if value:
            conditions.append(table.c[name] == query_text(value))
    if query.since:
        conditions.append(table.c.time >= query.since)
    if query.until:
        conditions.append(table.c.time < query.until)
    if query.after_index is not None:
        conditions.append(
            table.c.idx > query.after_index
            if query.oldest_first
            else table.c.idx < query.after_index
        )
    return conditions
