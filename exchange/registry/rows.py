"""Registry records as table rows: loading them, writing them, and the registry version row.

Every function takes the caller's connection, so the store decides what one transaction holds.
"""

from __future__ import annotations

import json
from collections import defaultdict
from collections.abc import Sequence
from typing import Any

import sqlalchemy as sa

from exchange.registry.model import (
    CertificateType,
    DataSource,
    Department,
    FieldSpec,
    Grant,
    Record,
    SigningKey,
)
from exchange.registry.tables import (
    certificate_types,
    data_sources,
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
    """Departments (one, when `code` is given) with their signing keys, by code."""
    query = sa.select(departments).order_by(departments.c.code)
    key_query = sa.select(signing_keys).order_by(signing_keys.c.department, signing_keys.c.position)
    if code is not None:
        query = query.where(departments.c.code == code)
        key_query = key_query.where(signing_keys.c.department == code)
    keys: defaultdict[str, list[SigningKey]] = defaultdict(list)
    for row in conn.execute(key_query).mappings():
        keys[row["department"]].append(
            SigningKey(
                key_id=row["key_id"],
                public_key=bytes(row["public_key"]),
                algorithm=row["algorithm"],
                not_before=row["not_before"],
                not_after=row["not_after"],
            )
        )
    return [
        Department(code=row["code"], name=row["name"], signing_keys=tuple(keys[row["code"]]))
        for row in conn.execute(query).mappings()
    ]


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


def signing_key_owners(conn: sa.Connection, key_ids: Sequence[str]) -> dict[str, str]:
    """For each of `key_ids` already registered: the department holding it."""
    query = sa.select(signing_keys.c.key_id, signing_keys.c.department).where(
        signing_keys.c.key_id.in_(key_ids)
    )
    return {key_id: department for key_id, department in conn.execute(query)}


def save(conn: sa.Connection, record: Record, *, new: bool) -> None:
    """Insert the record (`new`) or replace the stored one with the same code or id."""
    table, key, row = _row(record)
    if new:
        conn.execute(table.insert().values(row))
    else:
        conn.execute(table.update().where(key == row[key.name]).values(row))
    if isinstance(record, Department):
        _replace_signing_keys(conn, record)


def _replace_signing_keys(conn: sa.Connection, department: Department) -> None:
    conn.execute(signing_keys.delete().where(signing_keys.c.department == department.code))
    if department.signing_keys:
        conn.execute(
            signing_keys.insert(),
            [
                {
                    "key_id": key.key_id,
                    "department": department.code,
                    "position": position,
                    "public_key": key.public_key,
                    "algorithm": key.algorithm,
                    "not_before": key.not_before,
                    "not_after": key.not_after,
                }
                for position, key in enumerate(department.signing_keys)
            ],
        )


def _row(record: Record) -> tuple[sa.Table, sa.Column[str], dict[str, Any]]:
    """The table a record lives in, its key column, and the record as that table's row."""
    match record:
        case Department():
            return departments, departments.c.code, {"code": record.code, "name": record.name}
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
