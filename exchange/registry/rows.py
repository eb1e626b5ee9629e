"""Registry records as table rows: loading them, writing them, and the registry version row.

Every function takes the caller's connection, so the store decides what one transaction holds.
"""

from __future__ import annotations

import json
from collections import defaultdict
from collections.abc import Sequence
from typing import Any

import sqlalchemy as sa

from audit.events import SubjectId
from exchange.registry.model import (
    CertificateType,
    ConsentIssuer,
    DataSource,
    Delegation,
    Department,
    FieldSpec,
    Grant,
    Quota,
    Record,
    SigningKey,
)
from exchange.registry.tables import (
    certificate_types,
    consent_issuer_keys,
    consent_issuers,
    data_sources,
    delegations,
    departments,
    grants,
    registry_version,
    signing_keys,
)


def read_version(conn: sa.Connection) -> int:
    """The registry version: bumped by every change."""
    return int(conn.execute(sa.select(registry_version.c.version)).scalar_one())


def bump_version(conn: sa.Connection) -> None:
    """Bump the version. Run first in a change: the row lock makes concurrent changes queue."""
    conn.execute(registry_version.update().values(version=registry_version.c.version + 1))


def load_departments(conn: sa.Connection, code: str | None = None) -> list[Department]:
    """Departments (one, when `code` is given) with their signing keys and quota, by code."""
    query = sa.select(departments).order_by(departments.c.code)
    if code is not None:
        query = query.where(departments.c.code == code)
    keys = _load_keys(conn, signing_keys, signing_keys.c.department, code)
    return [
        Department(
            code=row["code"],
            name=row["name"],
            signing_keys=tuple(keys[row["code"]]),
            quota=Quota(
                requests_per_second=row["quota_requests_per_second"],
                burst=row["quota_burst"],
                max_concurrent=row["quota_max_concurrent"],
            ),
        )
        for row in conn.execute(query).mappings()
    ]


def load_consent_issuers(conn: sa.Connection, id: str | None = None) -> list[ConsentIssuer]:
    """Consent issuers (one, when `id` is given) with their signing keys, by id."""
    query = sa.select(consent_issuers).order_by(consent_issuers.c.id)
    if id is not None:
        query = query.where(consent_issuers.c.id == id)
    keys = _load_keys(conn, consent_issuer_keys, consent_issuer_keys.c.issuer, id)
    return [
        ConsentIssuer(id=row["id"], name=row["name"], signing_keys=tuple(keys[row["id"]]))
        for row in conn.execute(query).mappings()
    ]


def _load_keys(
    conn: sa.Connection, table: sa.Table, owner: sa.Column[str], only: str | None
) -> defaultdict[str, list[SigningKey]]:
    """Signing keys by owner, in the order the administrator listed them."""
    query = sa.select(table).order_by(owner, table.c.position)
    if only is not None:
        query = query.where(owner == only)
    keys: defaultdict[str, list[SigningKey]] = defaultdict(list)
    for row in conn.execute(query).mappings():
        keys[row[owner.name]].append(
            SigningKey(
                key_id=row["key_id"],
                public_key=bytes(row["public_key"]),
                algorithm=row["algorithm"],
                not_before=row["not_before"],
                not_after=row["not_after"],
            )
        )
    return keys


def load_certificate_types(conn: sa.Connection, code: str | None = None) -> list[CertificateType]:
    """Certificate types (one, when `code` is given), by code."""
    query = sa.select(certificate_types).order_by(certificate_types.c.code)
    if code is not None:
        query = query.where(certificate_types.c.code == code)
    return [
        CertificateType(
            code=row["code"],
            name=row["name"],
            issuing_department=row["issuing_department"],
            fields=tuple(FieldSpec(**spec) for spec in json.loads(row["fields"])),
            sharing_class=row["sharing_class"],
            subject_kind=row["subject_kind"],
        )
        for row in conn.execute(query).mappings()
    ]


def load_data_sources(conn: sa.Connection, id: str | None = None) -> list[DataSource]:
    """Data sources (one, when `id` is given), by id."""
    query = sa.select(data_sources).order_by(data_sources.c.id)
    if id is not None:
        query = query.where(data_sources.c.id == id)
    return [
        DataSource(
            id=row["id"],
            issuing_department=row["issuing_department"],
            certificate_types=tuple(json.loads(row["certificate_types"])),
            endpoints=tuple(json.loads(row["endpoints"])),
            tls_identity=row["tls_identity"],
            enabled=bool(row["enabled"]),
        )
        for row in conn.execute(query).mappings()
    ]


def load_grants(
    conn: sa.Connection,
    *,
    id: str | None = None,
    requesting_department: str | None = None,
    certificate_type: str | None = None,
) -> list[Grant]:
    """Grants matching every filter given, by requesting department, type and id."""
    query = sa.select(grants).order_by(
        grants.c.requesting_department, grants.c.certificate_type, grants.c.id
    )
    for column, value in (
        (grants.c.id, id),
        (grants.c.requesting_department, requesting_department),
        (grants.c.certificate_type, certificate_type),
    ):
        if value is not None:
            query = query.where(column == value)
    return [
        Grant(
            id=row["id"],
            requesting_department=row["requesting_department"],
            certificate_type=row["certificate_type"],
            fields=tuple(json.loads(row["fields"])),
            purposes=tuple(json.loads(row["purposes"])),
            valid_from=row["valid_from"],
            valid_until=row["valid_until"],
        )
        for row in conn.execute(query).mappings()
    ]


def load_delegations(conn: sa.Connection, id: str | None = None) -> list[Delegation]:
    """Delegations (one, when `id` is given), by id; revoked ones included."""
    query = sa.select(delegations).order_by(delegations.c.id)
    if id is not None:
        query = query.where(delegations.c.id == id)
    return [
        Delegation(
            id=row["id"],
            principal=SubjectId(row["principal_kind"], row["principal_id"]),
            agent=SubjectId(row["agent_kind"], row["agent_id"]),
            certificate_types=tuple(json.loads(row["certificate_types"])),
            purposes=tuple(json.loads(row["purposes"])),
            valid_from=row["valid_from"],
            valid_until=row["valid_until"],
            revoked=bool(row["revoked"]),
        )
        for row in conn.execute(query).mappings()
    ]


def signing_key_owners(conn: sa.Connection, key_ids: Sequence[str]) -> dict[str, str]:
    """For each of `key_ids` already registered: who holds it ("department 'PSB'", ...).

    Document signing keys and consent keys share one key-id space: one key, one purpose.
    """
    owners: dict[str, str] = {}
    for table, owner, label in (
        (signing_keys, signing_keys.c.department, "department"),
        (consent_issuer_keys, consent_issuer_keys.c.issuer, "consent issuer"),
    ):
        query = sa.select(table.c.key_id, owner).where(table.c.key_id.in_(key_ids))
        for key_id, holder in conn.execute(query):
            owners[key_id] = f"{label} {holder!r}"
    return owners


def save(conn: sa.Connection, record: Record, *, new: bool) -> None:
    """Insert the record (`new`) or replace the stored one with the same code or id."""
    table, key, row = _row(record)
    if new:
        conn.execute(table.insert().values(row))
    else:
        conn.execute(table.update().where(key == row[key.name]).values(row))
    if isinstance(record, Department):
        _replace_keys(
            conn, signing_keys, signing_keys.c.department, record.code, record.signing_keys
        )
    elif isinstance(record, ConsentIssuer):
        _replace_keys(
            conn, consent_issuer_keys, consent_issuer_keys.c.issuer, record.id, record.signing_keys
        )


def _replace_keys(
    conn: sa.Connection,
    table: sa.Table,
    owner: sa.Column[str],
    holder: str,
    keys: Sequence[SigningKey],
) -> None:
    conn.execute(table.delete().where(owner == holder))
    if keys:
        conn.execute(
            table.insert(),
            [
                {
                    "key_id": key.key_id,
                    owner.name: holder,
                    "position": position,
                    "public_key": key.public_key,
                    "algorithm": key.algorithm,
                    "not_before": key.not_before,
                    "not_after": key.not_after,
                }
                for position, key in enumerate(keys)
            ],
        )


def _row(record: Record) -> tuple[sa.Table, sa.Column[str], dict[str, Any]]:
    """The table a record lives in, its key column, and the record as that table's row."""
    match record:
        case Department():
            return (
                departments,
                departments.c.code,
                {
                    "code": record.code,
                    "name": record.name,
                    "quota_requests_per_second": record.quota.requests_per_second,
                    "quota_burst": record.quota.burst,
                    "quota_max_concurrent": record.quota.max_concurrent,
                },
            )
        case ConsentIssuer():
            return consent_issuers, consent_issuers.c.id, {"id": record.id, "name": record.name}
        case Delegation():
            return (
                delegations,
                delegations.c.id,
                {
                    "id": record.id,
                    "principal_kind": record.principal.kind,
                    "principal_id": record.principal.id,
                    "agent_kind": record.agent.kind,
                    "agent_id": record.agent.id,
                    "certificate_types": json.dumps(list(record.certificate_types)),
                    "purposes": json.dumps(list(record.purposes)),
                    "valid_from": record.valid_from,
                    "valid_until": record.valid_until,
                    "revoked": record.revoked,
                },
            )
        case CertificateType():
            fields = [{"name": f.name, "description": f.description} for f in record.fields]
            return (
                certificate_types,
                certificate_types.c.code,
                {
                    "code": record.code,
                    "name": record.name,
                    "issuing_department": record.issuing_department,
                    "fields": json.dumps(fields),
                    "sharing_class": record.sharing_class,
                    "subject_kind": record.subject_kind,
                },
            )
        case DataSource():
            return (
                data_sources,
                data_sources.c.id,
                {
                    "id": record.id,
                    "issuing_department": record.issuing_department,
                    "certificate_types": json.dumps(list(record.certificate_types)),
                    "endpoints": json.dumps(list(record.endpoints)),
                    "tls_identity": record.tls_identity,
                    "enabled": record.enabled,
                },
            )
        case Grant():
            return (
                grants,
                grants.c.id,
                {
                    "id": record.id,
                    "requesting_department": record.requesting_department,
                    "certificate_type": record.certificate_type,
                    "fields": json.dumps(list(record.fields)),
                    "purposes": json.dumps(list(record.purposes)),
                    "valid_from": record.valid_from,
                    "valid_until": record.valid_until,
                },
            )
