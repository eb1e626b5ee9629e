"""How a registry change must fit the catalogue it joins, checked inside the change's transaction.

Each `*_references(conn, record, before)` raises invalid_argument (or already_exists for a
signing key held by someone else) naming the field; `before` is None for a registration.
Records are checked on their own first (exchange/registry/validation.py).
"""

from __future__ import annotations

import sqlalchemy as sa

from exchange.errors import already_exists, invalid_argument
from exchange.registry import rows
from exchange.registry.model import (
    CertificateType,
    ConsentIssuer,
    DataSource,
    Delegation,
    Department,
    Grant,
    SigningKey,
)


def require_department(conn: sa.Connection, path: str, code: str) -> None:
    if not rows.load_departments(conn, code):
        raise invalid_argument(f"{path}: unknown department {code!r}")


def require_certificate_type(conn: sa.Connection, path: str, code: str) -> CertificateType:
    found = rows.load_certificate_types(conn, code)
    if not found:
        raise invalid_argument(f"{path}: unknown certificate type {code!r}")
    return found[0]


def department_references(
    conn: sa.Connection, department: Department, _before: Department | None
) -> None:
    keys_not_held_elsewhere(
        conn, "department", f"department {department.code!r}", department.signing_keys
    )


def keys_not_held_elsewhere(
    conn: sa.Connection, path: str, holder: str, keys: tuple[SigningKey, ...]
) -> None:
    owners = rows.signing_key_owners(conn, [key.key_id for key in keys])
    for i, key in enumerate(keys):
        owner = owners.get(key.key_id)
        if owner is not None and owner != holder:
            raise already_exists(
                f"{path}.signing_keys[{i}].key_id: key {key.key_id!r} is already "
                f"registered to {owner}"
            )


def consent_issuer_references(
    conn: sa.Connection, issuer: ConsentIssuer, _before: ConsentIssuer | None
) -> None:
    keys_not_held_elsewhere(
        conn, "consent_issuer", f"consent issuer {issuer.id!r}", issuer.signing_keys
    )


def delegation_references(
    conn: sa.Connection, delegation: Delegation, before: Delegation | None
) -> None:
    for i, code in enumerate(delegation.certificate_types):
        require_certificate_type(conn, f"delegation.certificate_types[{i}]", code)
    if before is None:
        return
    for side in ("principal", "agent"):
        if getattr(delegation, side) != getattr(before, side):
            raise invalid_argument(
                f"delegation.{side}: cannot change; register a new delegation instead"
            )
    if before.revoked and not delegation.revoked:
        raise invalid_argument(
            "delegation.revoked: a revoked delegation cannot be reinstated; register a new one"
        )
    if before.revoked and delegation != before:
        # What authority the agent had stays on record as it was when it ended.
        raise invalid_argument(
            "delegation: a revoked delegation cannot be changed; register a new one"
        )


def certificate_type_references(
    conn: sa.Connection, certificate_type: CertificateType, before: CertificateType | None
) -> None:
    department = certificate_type.issuing_department
    require_department(conn, "certificate_type.issuing_department", department)
    if before is None:
        return
    # Keep the catalogue consistent: grants only name fields the type has, and data sources
    # only serve types their own department issues.
    fields = set(certificate_type.field_names())
    for grant in rows.load_grants(conn, certificate_type=certificate_type.code):
        for name in grant.fields:
            if name not in fields:
                raise invalid_argument(
                    f"certificate_type.fields: {name!r} is still granted by grant "
                    f"{grant.id!r}; update that grant first"
                )
    for source in rows.load_data_sources(conn):
        if certificate_type.code in source.certificate_types and (
            source.issuing_department != department
        ):
            raise invalid_argument(
                f"certificate_type.issuing_department: data source {source.id!r} of department "
                f"{source.issuing_department!r} serves this type; update that data source first"
            )


def data_source_references(
    conn: sa.Connection, data_source: DataSource, _before: DataSource | None
) -> None:
    department = data_source.issuing_department
    require_department(conn, "data_source.issuing_department", department)
    for i, code in enumerate(data_source.certificate_types):
        path = f"data_source.certificate_types[{i}]"
        certificate_type = require_certificate_type(conn, path, code)
        if certificate_type.issuing_department != department:
            raise invalid_argument(
                f"{path}: {code!r} is issued by department "
                f"{certificate_type.issuing_department!r}, not by {department!r}"
            )


def grant_references(conn: sa.Connection, grant: Grant, _before: Grant | None) -> None:
    require_department(conn, "grant.requesting_department", grant.requesting_department)
    certificate_type = require_certificate_type(
        conn, "grant.certificate_type", grant.certificate_type
    )
    schema = set(certificate_type.field_names())
    for name in grant.fields:
        if name not in schema:
            raise invalid_argument(
                f"grant.fields: {name!r} is not a field of certificate type "
                f"{certificate_type.code!r}"
            )
