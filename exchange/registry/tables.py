"""The registry's tables on the shared `exchange.db.metadata`.

Lists (a type's fields, a grant's purposes, a data source's endpoints) are JSON text: they are
always read and written whole with their record, never queried by element. Timestamps are stored
timezone-aware and always come back as UTC-aware datetimes, on SQLite too.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import sqlalchemy as sa

from exchange.db import metadata

CODE_LENGTH = 64
NAME_LENGTH = 200


class UtcDateTime(sa.TypeDecorator[datetime]):
    """A timezone-aware timestamp that is written as UTC and read back UTC-aware.

    SQLite keeps no offset, so values are normalised to UTC before they are stored and the
    UTC zone is put back when they are read; PostgreSQL returns the session's zone, which is
    converted to UTC.
    """

    impl = sa.DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: sa.Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError(f"naive datetime {value.isoformat()} cannot be stored; use UTC")
        return value.astimezone(UTC)

    def process_result_value(self, value: Any, dialect: sa.Dialect) -> datetime | None:
        if value is None:
            return None
        if not isinstance(value, datetime):
            raise TypeError(f"expected a datetime from the database, got {type(value).__name__}")
        if value.tzinfo is None:
            return value.replace(tzinfo=UTC)
        return value.astimezone(UTC)


def _code(name: str, *args: Any, **kwargs: Any) -> sa.Column[str]:
    return sa.Column(name, sa.String(CODE_LENGTH), *args, **kwargs)


def _limit(name: str) -> sa.Column[int]:
    return sa.Column(name, sa.Integer, nullable=False, server_default="0")


departments = sa.Table(
    "departments",
    metadata,
    _code("code", primary_key=True),
    sa.Column("name", sa.String(NAME_LENGTH), nullable=False),
    # The department's lookup quota; 0: unlimited.
    _limit("quota_requests_per_second"),
    _limit("quota_burst"),
    _limit("quota_max_concurrent"),
)

signing_keys = sa.Table(
    "signing_keys",
    metadata,
    sa.Column("key_id", sa.String(CODE_LENGTH), primary_key=True),
    _code("department", sa.ForeignKey("departments.code"), nullable=False, index=True),
    # Keeps the order in which the administrator listed the keys.
    sa.Column("position", sa.Integer, nullable=False),
    sa.Column("public_key", sa.LargeBinary, nullable=False),
    sa.Column("algorithm", sa.String(32), nullable=False),
    sa.Column("not_before", UtcDateTime, nullable=True),
    sa.Column("not_after", UtcDateTime, nullable=True),
)

certificate_types = sa.Table(
    "certificate_types",
    metadata,
    _code("code", primary_key=True),
    sa.Column("name", sa.String(NAME_LENGTH), nullable=False),
    _code("issuing_department", sa.ForeignKey("departments.code"), nullable=False),
    sa.Column("fields", sa.Text, nullable=False),
    sa.Column("sharing_class", sa.String(32), nullable=False),
    sa.Column("subject_kind", sa.String(32), nullable=False),
)

data_sources = sa.Table(
    "data_sources",
    metadata,
    _code("id", primary_key=True),
    _code("issuing_department", sa.ForeignKey("departments.code"), nullable=False),
    sa.Column("certificate_types", sa.Text, nullable=False),
    sa.Column("endpoints", sa.Text, nullable=False),
    sa.Column("tls_identity", sa.String(NAME_LENGTH), nullable=False),
    sa.Column("enabled", sa.Boolean, nullable=False),
)

grants = sa.Table(
    "grants",
    metadata,
    _code("id", primary_key=True),
    _code("requesting_department", sa.ForeignKey("departments.code"), nullable=False, index=True),
    _code("certificate_type", sa.ForeignKey("certificate_types.code"), nullable=False),
    sa.Column("fields", sa.Text, nullable=False),
    sa.Column("purposes", sa.Text, nullable=False),
    sa.Column("valid_from", UtcDateTime, nullable=True),
    sa.Column("valid_until", UtcDateTime, nullable=True),
)

consent_issuers = sa.Table(
    "consent_issuers",
    metadata,
    _code("id", primary_key=True),
    sa.Column("name", sa.String(NAME_LENGTH), nullable=False),
)

consent_issuer_keys = sa.Table(
    "consent_issuer_keys",
    metadata,
    sa.Column("key_id", sa.String(CODE_LENGTH), primary_key=True),
    _code("issuer", sa.ForeignKey("consent_issuers.id"), nullable=False, index=True),
    sa.Column("position", sa.Integer, nullable=False),
    sa.Column("public_key", sa.LargeBinary, nullable=False),
    sa.Column("algorithm", sa.String(32), nullable=False),
    sa.Column("not_before", UtcDateTime, nullable=True),
    sa.Column("not_after", UtcDateTime, nullable=True),
)

delegations = sa.Table(
    "delegations",
    metadata,
    _code("id", primary_key=True),
    sa.Column("principal_kind", sa.String(32), nullable=False),
    sa.Column("principal_id", sa.String(32), nullable=False),
    sa.Column("agent_kind", sa.String(32), nullable=False),
    sa.Column("agent_id", sa.String(32), nullable=False),
    sa.Column("certificate_types", sa.Text, nullable=False),
    sa.Column("purposes", sa.Text, nullable=False),
    sa.Column("valid_from", UtcDateTime, nullable=True),
    sa.Column("valid_until", UtcDateTime, nullable=True),
    sa.Column("revoked", sa.Boolean, nullable=False),
)

# One row (id 1). Every change bumps it in its own transaction, so a hub learns that its
# cached catalogue is stale from one cheap query.
registry_version = sa.Table(
    "registry_version",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=False),
    sa.Column("version", sa.BigInteger, nullable=False),
    sa.CheckConstraint("id = 1", name="single_row"),
)
