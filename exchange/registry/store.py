"""The registry store: validated changes to the catalogue, and cached snapshots of it.

Each change is one transaction (its own, or the audit log's that records it: see `within`)
that first bumps the registry version row. That row lock makes concurrent changes (from any
hub process) queue, so the existence and reference checks that follow see every earlier
change; and a hub learns its cached snapshot is stale from one cheap read of that row on its
next look-up (exchange/registry/version.py: inline on SQLite, shared between concurrent
callers elsewhere), which is never older than the call asking.

Register refuses a taken code with ALREADY_EXISTS, update an unknown one with NOT_FOUND; a
record that is malformed or names an unknown department or type is INVALID_ARGUMENT.
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import dataclasses
import threading
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Generic, TypeVar

import sqlalchemy as sa

from exchange.errors import already_exists, not_found, unavailable
from exchange.registry import references, rows
from exchange.registry.model import (
    CertificateType,
    ConsentIssuer,
    DataSource,
    Delegation,
    Department,
    Grant,
    Record,
)
from exchange.registry.snapshot import RegistrySnapshot
from exchange.registry.validation import (
    check_code,
    checked_certificate_type,
    checked_consent_issuer,
    checked_data_source,
    checked_delegation,
    checked_department,
    checked_grant,
)
from exchange.registry.version import VersionReader

R = TypeVar("R", bound=Record)

# A snapshot is read with the version before and after; a change in between means retry.
SNAPSHOT_ATTEMPTS = 5


@dataclass(frozen=True)
class _Kind(Generic[R]):
    """How the store handles one kind of record."""

    label: str  # as messages name it: "department", "data source"
    key: Callable[[R], str]
    check: Callable[[R], R]
    load_one: Callable[[sa.Connection, str], list[R]]
    check_references: Callable[[sa.Connection, R, R | None], None]


class RegistryStore:
    """The catalogue in the database; every method but `snapshot` is synchronous."""

    def __init__(self, engine: sa.Engine) -> None:
        self._engine = engine
        self._snapshot: RegistrySnapshot | None = None
        self._reload = threading.Lock()
        self._version = VersionReader(engine)
        self._transaction: sa.Connection | None = None  # see within()

    def within(self, conn: sa.Connection) -> RegistryStore:
        """This store making its changes in `conn`'s open transaction, which the caller commits
        or rolls back: the audit log's, so that a change and its audit entry are committed
        together or not at all (see AuditLog.append_change)."""
        view = copy.copy(self)
        view._transaction = conn
        return view

    # Departments

    def register_department(self, department: Department) -> Department:
        """Store a new department with its signing keys (key ids derived when empty)."""
        return self._register(_DEPARTMENT, department)

    def update_department(self, department: Department) -> tuple[Department, Department]:
        """Replace a department's name and signing keys; returns (before, after)."""
        return self._update(_DEPARTMENT, department)

    def list_departments(self) -> list[Department]:
        """Every department, by code."""
        with self._engine.connect() as conn:
            return rows.load_departments(conn)

    # Certificate types

    def register_certificate_type(self, certificate_type: CertificateType) -> CertificateType:
        """Store a new certificate type of a registered department."""
        return self._register(_CERTIFICATE_TYPE, certificate_type)

    def update_certificate_type(
        self, certificate_type: CertificateType
    ) -> tuple[CertificateType, CertificateType]:
        """Replace a certificate type; refused if grants or data sources would stop fitting it."""
        return self._update(_CERTIFICATE_TYPE, certificate_type)

    def list_certificate_types(self) -> list[CertificateType]:
        """Every certificate type, by code."""
        with self._engine.connect() as conn:
            return rows.load_certificate_types(conn)

    # Data sources

    def register_data_source(self, data_source: DataSource) -> DataSource:
        """Store a new data source serving types its department issues."""
        return self._register(_DATA_SOURCE, data_source)

    def update_data_source(self, data_source: DataSource) -> tuple[DataSource, DataSource]:
        """Replace a data source (e.g. its endpoints, or enabled); returns (before, after)."""
        return self._update(_DATA_SOURCE, data_source)

    def list_data_sources(self) -> list[DataSource]:
        """Every data source, enabled or not, by id."""
        with self._engine.connect() as conn:
            return rows.load_data_sources(conn)

    # Grants

    def register_grant(self, grant: Grant) -> Grant:
        """Store a new grant; its id is assigned when empty."""
        if not grant.id:
            grant = dataclasses.replace(grant, id=f"g-{uuid.uuid4().hex[:12]}")
        return self._register(_GRANT, grant)

    def update_grant(self, grant: Grant) -> tuple[Grant, Grant]:
        """Replace a grant; returns (before, after)."""
        return self._update(_GRANT, grant)

    def list_grants(self, requesting_department: str = "") -> list[Grant]:
        """Every grant, or those to `requesting_department` when given."""
        if requesting_department:
            check_code("requesting_department", requesting_department)
        with self._engine.connect() as conn:
            return rows.load_grants(conn, requesting_department=requesting_department or None)

    # Consent issuers

    def register_consent_issuer(self, issuer: ConsentIssuer) -> ConsentIssuer:
        """Store a new consent issuer with its signing keys (key ids derived when empty)."""
        return self._register(_CONSENT_ISSUER, issuer)

    def update_consent_issuer(self, issuer: ConsentIssuer) -> tuple[ConsentIssuer, ConsentIssuer]:
        """Replace a consent issuer's name and keys (key rotation); returns (before, after)."""
        return self._update(_CONSENT_ISSUER, issuer)

    def list_consent_issuers(self) -> list[ConsentIssuer]:
        """Every consent issuer, by id."""
        with self._engine.connect() as conn:
            return rows.load_consent_issuers(conn)

    # Delegations

    def register_delegation(self, delegation: Delegation) -> Delegation:
        """Store a new delegation; its id is assigned when empty."""
        if not delegation.id:
            delegation = dataclasses.replace(delegation, id=f"d-{uuid.uuid4().hex[:12]}")
        return self._register(_DELEGATION, delegation)

    def update_delegation(self, delegation: Delegation) -> tuple[Delegation, Delegation]:
        """Replace a delegation's scope, window or revocation; returns (before, after).

        Its principal and agent are fixed, and a revoked delegation stays revoked: a new
        authority is a new delegation, so the record of the old one stays as it was.
        """
        return self._update(_DELEGATION, delegation)

    def list_delegations(self) -> list[Delegation]:
        """Every delegation, revoked ones included, by id."""
        with self._engine.connect() as conn:
            return rows.load_delegations(conn)

    # Snapshots

    async def aclose(self) -> None:
        """Close the version reader's own connections (the engine stays the caller's)."""
        await self._version.aclose()

    async def snapshot(self) -> RegistrySnapshot:
        """The catalogue now: cached, reloaded only when the registry version has changed.

        The version is read after this call began, so any change committed before it, by this
        process or another, is in the snapshot returned.
        """
        version = await self._version.read()
        cached = self._snapshot
        if cached is not None and cached.version >= version:
            return cached
        return await asyncio.to_thread(self._current_snapshot, version)

    def _current_snapshot(self, version: int) -> RegistrySnapshot:
        cached = self._snapshot
        # Versions only grow; a newer snapshot another thread loaded meanwhile is as good.
        if cached is not None and cached.version >= version:
            return cached
        with self._reload:
            cached = self._snapshot
            if cached is None or cached.version < version:
                cached = self._snapshot = self._load_snapshot()
            return cached

    def _load_snapshot(self) -> RegistrySnapshot:
        for _ in range(SNAPSHOT_ATTEMPTS):
            with self._engine.connect() as conn:
                version = rows.read_version(conn)
                snapshot = RegistrySnapshot(
                    version,
                    rows.load_departments(conn),
                    rows.load_certificate_types(conn),
                    rows.load_data_sources(conn),
                    rows.load_grants(conn),
                    rows.load_consent_issuers(conn),
                    rows.load_delegations(conn),
                )
                # Every change bumps the version, so an unchanged version means no change
                # committed while the tables were read: they are one consistent state.
                if rows.read_version(conn) == version:
                    return snapshot
        raise unavailable("the registry kept changing while it was being read; try again")

    # The shape of every change

    def _register(self, kind: _Kind[R], record: R) -> R:
        record = kind.check(record)
        with self._change() as conn:
            if kind.load_one(conn, kind.key(record)):
                raise already_exists(f"{kind.label} {kind.key(record)!r} already exists")
            kind.check_references(conn, record, None)
            rows.save(conn, record, new=True)
        return record

    def _update(self, kind: _Kind[R], record: R) -> tuple[R, R]:
        record = kind.check(record)
        with self._change() as conn:
            found = kind.load_one(conn, kind.key(record))
            if not found:
                raise not_found(f"{kind.label} {kind.key(record)!r} is not registered")
            kind.check_references(conn, record, found[0])
            rows.save(conn, record, new=False)
        return found[0], record

    @contextlib.contextmanager
    def _change(self) -> Iterator[sa.Connection]:
        if self._transaction is not None:
            rows.bump_version(self._transaction)
            yield self._transaction
            return
        with self._engine.begin() as conn:
            rows.bump_version(conn)
            yield conn


_DEPARTMENT = _Kind[Department](
    "department",
    lambda d: d.code,
    checked_department,
    rows.load_departments,
    references.department_references,
)
_CERTIFICATE_TYPE = _Kind[CertificateType](
    "certificate type",
    lambda t: t.code,
    checked_certificate_type,
    rows.load_certificate_types,
    references.certificate_type_references,
)
_DATA_SOURCE = _Kind[DataSource](
    "data source",
    lambda s: s.id,
    checked_data_source,
    rows.load_data_sources,
    references.data_source_references,
)
_CONSENT_ISSUER = _Kind[ConsentIssuer](
    "consent issuer",
    lambda i: i.id,
    checked_consent_issuer,
    rows.load_consent_issuers,
    references.consent_issuer_references,
)
_DELEGATION = _Kind[Delegation](
    "delegation",
    lambda d: d.id,
    checked_delegation,
    rows.load_delegations,
    references.delegation_references,
)
_GRANT = _Kind[Grant](
    "grant",
    lambda g: g.id,
    checked_grant,
    lambda conn, id: rows.load_grants(conn, id=id),
    references.grant_references,
)
