"""The registry: departments and their signing keys, certificate types, data sources, grants.

Revision ID: 0001_registry
Revises:
Create Date: 2025-01-01
"""

import sqlalchemy as sa
from alembic import op

revision = "0001_registry"
down_revision = None
branch_labels = None
depends_on = None

CODE = sa.String(64)
NAME = sa.String(200)


def upgrade() -> None:
    op.create_table(
        "departments",
        sa.Column("code", CODE, nullable=False),
        sa.Column("name", NAME, nullable=False),
        sa.PrimaryKeyConstraint("code", name="pk_departments"),
    )
    op.create_table(
        "signing_keys",
        sa.Column("key_id", CODE, nullable=False),
        sa.Column("department", CODE, nullable=False),
        sa.Column("position", sa.Integer, nullable=False),
        sa.Column("public_key", sa.LargeBinary, nullable=False),
        sa.Column("algorithm", sa.String(32), nullable=False),
        sa.Column("not_before", sa.DateTime(timezone=True), nullable=True),
        sa.Column("not_after", sa.DateTime(timezone=True), nullable=True),
        sa.PrimaryKeyConstraint("key_id", name="pk_signing_keys"),
        sa.ForeignKeyConstraint(
            ["department"], ["departments.code"], name="fk_signing_keys_department_departments"
        ),
    )
    op.create_index("ix_signing_keys_department", "signing_keys", ["department"])
    op.create_table(
        "certificate_types",
        sa.Column("code", CODE, nullable=False),
        sa.Column("name", NAME, nullable=False),
        sa.Column("issuing_department", CODE, nullable=False),
        sa.Column("fields", sa.Text, nullable=False),
        sa.Column("sharing_class", sa.String(32), nullable=False),
        sa.Column("subject_kind", sa.String(32), nullable=False),
        sa.PrimaryKeyConstraint("code", name="pk_certificate_types"),
        sa.ForeignKeyConstraint(
            ["issuing_department"],
            ["departments.code"],
            name="fk_certificate_types_issuing_department_departments",
        ),
    )
    op.create_table(
        "data_sources",
        sa.Column("id", CODE, nullable=False),
        sa.Column("issuing_department", CODE, nullable=False),
        sa.Column("certificate_types", sa.Text, nullable=False),
        sa.Column("endpoints", sa.Text, nullable=False),
        sa.Column("tls_identity", NAME, nullable=False),
        sa.Column("enabled", sa.Boolean, nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_data_sources"),
        sa.ForeignKeyConstraint(
            ["issuing_department"],
            ["departments.code"],
            name="fk_data_sources_issuing_department_departments",
        ),
    )
    op.create_table(
        "grants",
        sa.Column("id", CODE, nullable=False),
        sa.Column("requesting_department", CODE, nullable=False),
        sa.Column("certificate_type", CODE, nullable=False),
        sa.Column("fields", sa.Text, nullable=False),
        sa.Column("purposes", sa.Text, nullable=False),
        sa.Column("valid_from", sa.DateTime(timezone=True), nullable=True),
        sa.Column("valid_until", sa.DateTime(timezone=True), nullable=True),
        sa.PrimaryKeyConstraint("id", name="pk_grants"),
        sa.ForeignKeyConstraint(
            ["requesting_department"],
            ["departments.code"],
            name="fk_grants_requesting_department_departments",
        ),
        sa.ForeignKeyConstraint(
            ["certificate_type"],
            ["certificate_types.code"],
            name="fk_grants_certificate_type_certificate_types",
        ),
    )
    op.create_index("ix_grants_requesting_department", "grants", ["requesting_department"])
    version = op.create_table(
        "registry_version",
        sa.Column("id", sa.Integer, nullable=False, autoincrement=False),
        sa.Column("version", sa.BigInteger, nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_registry_version"),
        sa.CheckConstraint("id = 1", name="single_row"),
    )
    op.bulk_insert(version, [{"id": 1, "version": 0}])


def downgrade() -> None:
    op.drop_table("registry_version")
    op.drop_index("ix_grants_requesting_department", table_name="grants")
    op.drop_table("grants")
    op.drop_table("data_sources")
    op.drop_table("certificate_types")
    op.drop_index("ix_signing_keys_department", table_name="signing_keys")
    op.drop_table("signing_keys")
    op.drop_table("departments")
