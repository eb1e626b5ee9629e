"""Trust: department quotas, consent issuers and their keys, delegations, consent uses.

Revision ID: 0003_trust
Revises: 0002_audit_log
Create Date: 2025-01-01
"""

import sqlalchemy as sa
from alembic import op

revision = "0003_trust"
down_revision = "0002_audit_log"
branch_labels = None
depends_on = None

CODE = sa.String(64)
NAME = sa.String(200)
QUOTA_COLUMNS = ("quota_requests_per_second", "quota_burst", "quota_max_concurrent")


def upgrade() -> None:
    with op.batch_alter_table("departments") as departments:
        for column in QUOTA_COLUMNS:
            departments.add_column(
                sa.Column(column, sa.Integer, nullable=False, server_default="0")
            )
    op.create_table(
        "consent_issuers",
        sa.Column("id", CODE, nullable=False),
        sa.Column("name", NAME, nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_consent_issuers"),
    )
    op.create_table(
        "consent_issuer_keys",
        sa.Column("key_id", CODE, nullable=False),
        sa.Column("issuer", CODE, nullable=False),
        sa.Column("position", sa.Integer, nullable=False),
        sa.Column("public_key", sa.LargeBinary, nullable=False),
        sa.Column("algorithm", sa.String(32), nullable=False),
        sa.Column("not_before", sa.DateTime(timezone=True), nullable=True),
        sa.Column("not_after", sa.DateTime(timezone=True), nullable=True),
        sa.PrimaryKeyConstraint("key_id", name="pk_consent_issuer_keys"),
        sa.ForeignKeyConstraint(
            ["issuer"], ["consent_issuers.id"], name="fk_consent_issuer_keys_issuer_consent_issuers"
        ),
    )
    op.create_index("ix_consent_issuer_keys_issuer", "consent_issuer_keys", ["issuer"])
    op.create_table(
        "delegations",
        sa.Column("id", CODE, nullable=False),
        sa.Column("principal_kind", sa.String(32), nullable=False),
        sa.Column("principal_id", sa.String(32), nullable=False),
        sa.Column("agent_kind", sa.String(32), nullable=False),
        sa.Column("agent_id", sa.String(32), nullable=False),
        sa.Column("certificate_types", sa.Text, nullable=False),
        sa.Column("purposes", sa.Text, nullable=False),
        sa.Column("valid_from", sa.DateTime(timezone=True), nullable=True),
        sa.Column("valid_until", sa.DateTime(timezone=True), nullable=True),
        sa.Column("revoked", sa.Boolean, nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_delegations"),
    )
    op.create_table(
        "consent_uses",
        sa.Column("issuer", CODE, nullable=False),
        sa.Column("consent_id", CODE, nullable=False),
        sa.Column("first_used_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("expires_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("issuer", "consent_id", name="pk_consent_uses"),
    )
    op.create_index("ix_consent_uses_expires_at", "consent_uses", ["expires_at"])


def downgrade() -> None:
    op.drop_index("ix_consent_uses_expires_at", table_name="consent_uses")
    op.drop_table("consent_uses")
    op.drop_table("delegations")
    op.drop_index("ix_consent_issuer_keys_issuer", table_name="consent_issuer_keys")
    op.drop_table("consent_issuer_keys")
    op.drop_table("consent_issuers")
    with op.batch_alter_table("departments") as departments:
        for column in reversed(QUOTA_COLUMNS):
            departments.drop_column(column)
