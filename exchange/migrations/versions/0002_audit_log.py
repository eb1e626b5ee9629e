"""The audit log: entries, their query index, signed checkpoints, Merkle subtree hashes, and
the Kafka relays' offsets (the entries table is the relay's outbox).

Revision ID: 0002_audit_log
Revises: 0001_registry
Create Date: 2025-01-01
"""

import sqlalchemy as sa
from alembic import op

revision = "0002_audit_log"
down_revision = "0001_registry"
branch_labels = None
depends_on = None

INDEX = sa.BigInteger().with_variant(sa.Integer(), "sqlite")
QUERY_COLUMNS = (
    "time",
    "event",
    "outcome",
    "subject_ref",
    "requester_department",
    "issuer",
    "certificate_type",
    "purpose",
)


def _query_columns() -> list[sa.Column[object]]:
    return [
        sa.Column("time", sa.String(32), nullable=False),
        sa.Column("event", sa.String(32), nullable=False),
        sa.Column("outcome", sa.String(16), nullable=False),
        sa.Column("subject_ref", sa.String(64), nullable=False),
        sa.Column("requester_department", sa.Text, nullable=False),
        sa.Column("issuer", sa.Text, nullable=False),
        sa.Column("certificate_type", sa.Text, nullable=False),
        sa.Column("purpose", sa.Text, nullable=False),
    ]


def upgrade() -> None:
    op.create_table(
        "audit_entries",
        sa.Column("idx", INDEX, autoincrement=False, nullable=False),
        sa.Column("leaf", sa.LargeBinary, nullable=False),
        sa.Column("leaf_hash", sa.LargeBinary(32), nullable=False),
        *_query_columns(),
        sa.PrimaryKeyConstraint("idx", name="pk_audit_entries"),
    )
    op.create_table(
        "audit_query_index",
        sa.Column("idx", INDEX, autoincrement=False, nullable=False),
        *_query_columns(),
        sa.PrimaryKeyConstraint("idx", name="pk_audit_query_index"),
    )
    for column in QUERY_COLUMNS:
        op.create_index(f"ix_audit_query_index_{column}", "audit_query_index", [column, "idx"])
    op.create_table(
        "audit_checkpoints",
        sa.Column("tree_size", INDEX, autoincrement=False, nullable=False),
        sa.Column("root_hash", sa.LargeBinary(32), nullable=False),
        sa.Column("time", sa.String(32), nullable=False),
        sa.Column("checkpoint", sa.LargeBinary, nullable=False),
        sa.Column("key_id", sa.String(64), nullable=False),
        sa.Column("signature", sa.LargeBinary, nullable=False),
        sa.PrimaryKeyConstraint("tree_size", name="pk_audit_checkpoints"),
    )
    op.create_table(
        "audit_tree_nodes",
        sa.Column("level", sa.SmallInteger, autoincrement=False, nullable=False),
        sa.Column("position", sa.BigInteger, autoincrement=False, nullable=False),
        sa.Column("hash", sa.LargeBinary(32), nullable=False),
        sa.PrimaryKeyConstraint("level", "position", name="pk_audit_tree_nodes"),
    )
    op.create_table(
        "audit_relay_offsets",
        sa.Column("relay", sa.String(64), nullable=False),
        sa.Column("next_index", sa.BigInteger, nullable=False),
        sa.PrimaryKeyConstraint("relay", name="pk_audit_relay_offsets"),
    )


def downgrade() -> None:
    op.drop_table("audit_relay_offsets")
    op.drop_table("audit_tree_nodes")
    op.drop_table("audit_checkpoints")
    op.drop_table("audit_query_index")
    op.drop_table("audit_entries")
