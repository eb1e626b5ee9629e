"""A small sample catalogue for registry tests: two departments, one type, a source, a grant."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta, timezone

from cryptography.hazmat.primitives.asymmetric import ed25519

from exchange.registry import (
    CertificateType,
    DataSource,
    Department,
    FieldSpec,
    Grant,
    RegistryStore,
    SigningKey,
)

BEIJING = timezone(timedelta(hours=8))
JAN_2025 = datetime(2025, 1, 1, tzinfo=UTC)
JAN_2030 = datetime(2030, 1, 1, tzinfo=UTC)


def public_key() -> bytes:
    """A fresh raw 32-byte Ed25519 public key."""
    return ed25519.Ed25519PrivateKey.generate().public_key().public_bytes_raw()


def psb() -> Department:
    """The public security bureau, which issues resident identity records and signs them."""
    key = SigningKey(key_id="", public_key=public_key(), algorithm="", not_before=JAN_2025)
    return Department(code="PSB", name="公安局", signing_keys=(key,))


def civil_affairs() -> Department:
    """Civil affairs, which only asks: no signing keys."""
    return Department(code="MZJ", name="民政局")


def resident_identity() -> CertificateType:
    return CertificateType(
        code="resident_identity",
        name="居民身份证",
        issuing_department="PSB",
        fields=(
            FieldSpec("name", "姓名"),
            FieldSpec("birth_date", "出生日期"),
            FieldSpec("address", "住址"),
        ),
        sharing_class="UNCONDITIONAL",
        subject_kind="RESIDENT_ID",
    )


def psb_source() -> DataSource:
    return DataSource(
        id="psb-main",
        issuing_department="PSB",
        certificate_types=("resident_identity",),
        endpoints=("127.0.0.1:7001", "localhost:7002"),
        tls_identity="psb-adapter",
        enabled=True,
    )


def allowance_grant() -> Grant:
    """Civil affairs may read name and birth date, for the subsistence allowance, given in
    Beijing time (stored and returned as the same instants in UTC)."""
    return Grant(
        id="",
        requesting_department="MZJ",
        certificate_type="resident_identity",
        fields=("name", "birth_date"),
        purposes=("subsistence_allowance",),
        valid_from=datetime(2025, 1, 1, 8, tzinfo=BEIJING),
        valid_until=datetime(2030, 1, 1, 8, tzinfo=BEIJING),
    )


@dataclass(frozen=True)
class Catalogue:
    psb: Department
    civil_affairs: Department
    resident_identity: CertificateType
    psb_source: DataSource
    grant: Grant


def seed(store: RegistryStore) -> Catalogue:
    """Register the sample catalogue; returns the records as stored."""
    return Catalogue(
        psb=store.register_department(psb()),
        civil_affairs=store.register_department(civil_affairs()),
        resident_identity=store.register_certificate_type(resident_identity()),
        psb_source=store.register_data_source(psb_source()),
        grant=store.register_grant(allowance_grant()),
    )
