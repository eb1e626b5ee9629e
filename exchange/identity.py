"""Who is calling: the identity in a verified client certificate, and the current call's identity.

The TLS handshake has already checked the certificate against the CA (exchange/tls.py); this
module only reads it: CN is the caller's name, O its department code, OU its role. Parsed
certificates are cached by their PEM bytes, because every call of a connection presents the
same certificate and parsing X.509 on each call would sit on the hot path.

The hub's gate sets `CURRENT_IDENTITY` before a handler runs; handlers and the
services they call read it with `current_identity()`.
"""

from __future__ import annotations

import datetime as dt
import enum
import functools
from contextvars import ContextVar
from dataclasses import dataclass

import grpc.aio
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.x509.oid import NameOID

from exchange.errors import unauthenticated

# The gRPC auth-context property holding the peer's leaf certificate (PEM).
PEER_CERTIFICATE = "x509_pem_cert"


class Role(enum.StrEnum):
    """What a certificate's holder is for (its OU)."""

    HUB = "hub"
    ADAPTER = "adapter"
    DEPARTMENT = "department"
    ADMIN = "admin"
    AUDITOR = "auditor"


@dataclass(frozen=True)
class Identity:
    """A caller as its certificate names it."""

    name: str  # CN
    department: str  # O: department code ("EXCHANGE" for hub, admin, auditor)
    role: Role  # OU
    serial: int
    fingerprint: str  # SHA-256 of the DER certificate, lowercase hex
    not_after: dt.datetime  # timezone-aware UTC


CURRENT_IDENTITY: ContextVar[Identity] = ContextVar("current_identity")


def current_identity() -> Identity:
    """The identity of the call being handled (set by the hub's gate)."""
    try:
        return CURRENT_IDENTITY.get()
    except LookupError:
        raise RuntimeError("no caller identity: the gate did not run") from None


def identity_from_context(context: grpc.aio.ServicerContext) -> Identity:
    """The identity in the caller's verified client certificate.

    Raises unauthenticated(...) when the call carries no certificate, or one without CN, O or
    OU, or with a role this exchange does not know.
    """
    certificates = context.auth_context().get(PEER_CERTIFICATE)
    if not certificates:
        raise unauthenticated("no client certificate")
    return identity_from_pem(bytes(next(iter(certificates))))


@functools.lru_cache(maxsize=4096)
def identity_from_pem(pem: bytes) -> Identity:
    """The identity in a PEM certificate (cached by its bytes); raises unauthenticated(...)."""
    try:
        certificate = x509.load_pem_x509_certificate(pem)
    except ValueError:
        raise unauthenticated("client certificate cannot be parsed") from None
    name = _attribute(certificate, NameOID.COMMON_NAME, "CN (name)")
    department = _attribute(certificate, NameOID.ORGANIZATION_NAME, "O (department)")
    role = _attribute(certificate, NameOID.ORGANIZATIONAL_UNIT_NAME, "OU (role)")
    try:
        known_role = Role(role)
    except ValueError:
        raise unauthenticated(f"client certificate has unknown role {role!r}") from None
    return Identity(
        name=name,
        department=department,
        role=known_role,
        serial=certificate.serial_number,
        fingerprint=certificate.fingerprint(hashes.SHA256()).hex(),
        not_after=certificate.not_valid_after_utc,
    )


def _attribute(certificate: x509.Certificate, oid: x509.ObjectIdentifier, label: str) -> str:
    values = certificate.subject.get_attributes_for_oid(oid)
    if len(values) > 1:
        # Which one counts would depend on the order a CA wrote them in: an organisation's
        # CA may put several O or OU in a name; the exchange reads exactly one of each.
        raise unauthenticated(f"client certificate has {len(values)} {label}, not one")
    value = values[0].value if values else ""
    if not isinstance(value, str) or not value:
        raise unauthenticated(f"client certificate has no {label}")
    return value
