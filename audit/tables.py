"""The audit log's tables on the shared `exchange.db.metadata`.

- audit_entries: one row per entry. `leaf` is the entry's canonical JSON, the only content
  that counts; the other columns are copies of leaf fields for queries (a verification
  checks they agree with the leaf). Times are RFC 3339 UTC text, which sorts as it reads.
- audit_query_index: the same query columns, indexed, for every entry a checkpoint covers.
  The sequencer fills it in bulk (INSERT … SELECT) in the transaction that signs the
  checkpoint: maintaining eight secondary indexes row by row in every small append
  transaction would cost more than the rest of an append together, since each commit
  rewrites every index page it touched. Queries read entries the index does not cover yet
  (at most one checkpoint interval of them) straight from audit_entries.
- audit_checkpoints: every signed tree head; `checkpoint` is exactly the bytes signed.
- audit_tree_nodes: the hash of every complete subtree of 2**8 leaves or more, written by the
  sequencer, so proofs on a large log read O(log n) nodes and at most a few tiles of 256
  leaf hashes instead of every leaf.
- audit_relay_offsets: the next index each Kafka relay has to publish; relays read the
  entries themselves from audit_entries (the log is its own outbox, see audit.kafka_outbox).
"""

from __future__ import annotations

import sqlalchemy as sa

from exchange.db import metadata

# SQLite makes an INTEGER PRIMARY KEY the rowid itself: one B-tree instead of two.
INDEX = sa.BigInteger().with_variant(sa.Integer(), "sqlite")
TEXT = sa.Text()

audit_entries = sa.Table(
    "audit_entries",
    metadata,
    sa.Column("idx", INDEX, primary_key=True, autoincrement=False),
    sa.Column("leaf", sa.LargeBinary, nullable=False),
    sa.Column("leaf_hash", sa.LargeBinary(32), nullable=False),
    sa.Column("time", sa.String(32), nullable=False),
    sa.Column("event", sa.String(32), nullable=False),
    sa.Column("outcome", sa.String(16), nullable=False),
    sa.Column("subject_ref", sa.String(64), nullable=False),
    sa.Column("requester_department", TEXT, nullable=False),
    sa.Column("issuer", TEXT, nullable=False),
    sa.Column("certificate_type", TEXT, nullable=False),
    sa.Column("purpose", TEXT, nullable=False),
)

audit_query_index = sa.Table(
    "audit_query_index",
    metadata,
    sa.Column("idx", INDEX, primary_key=True, autoincrement=False),
    sa.Column("time", sa.String(32), nullable=False),
    sa.Column("event", sa.String(32), nullable=False),
    sa.Column("outcome", sa.String(16), nullable=False),
    sa.Column("subject_ref", sa.String(64), nullable=False),
    sa.Column("requester_department", TEXT, nullable=False),
    sa.Column("issuer", TEXT, nullable=False),
    sa.Column("certificate_type", TEXT, nullable=False),
    sa.Column("purpose", TEXT, nullable=False),
)

# Each query column is indexed with idx, so a filtered page is one index range scan in
# index order, newest first or oldest first.
for _column in (
    "time",
    "event",
    "outcome",
    "subject_ref",
    "requester_department",
    "issuer",
    "certificate_type",
    "purpose",
):
    sa.Index(
        f"ix_audit_query_index_{_column}", audit_query_index.c[_column], audit_query_index.c.idx
    )

audit_checkpoints = sa.Table(
    "audit_checkpoints",
    metadata,
    sa.Column("tree_size", INDEX, primary_key=True, autoincrement=False),
    sa.Column("root_hash", sa.LargeBinary(32), nullable=False),
    sa.Column("time", sa.String(32), nullable=False),
    sa.Column("checkpoint", sa.LargeBinary, nullable=False),
    sa.Column("key_id", sa.String(64), nullable=False),
    sa.Column("signature", sa.LargeBinary, nullable=False),
)

audit_tree_nodes = sa.Table(
    "audit_tree_nodes",
    metadata,
    sa.Column("level", sa.SmallInteger, primary_key=True, autoincrement=False),
    sa.Column("position", sa.BigInteger, primary_key=True, autoincrement=False),
    sa.Column("hash", sa.LargeBinary(32), nullable=False),
)

audit_relay_offsets = sa.Table(
    "audit_relay_offsets",
    metadata,
    sa.Column("relay", sa.String(64), primary_key=True),
    sa.Column("next_index", sa.BigInteger, nullable=False),
)
