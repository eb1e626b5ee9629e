"""What a registry record must look like on its own, before it is checked against the catalogue.

Each `checked_*` function returns the record with defaults filled in (a signing key's id and
algorithm) or raises invalid_argument naming the field, e.g.
"department.signing_keys[0].public_key: an Ed25519 public key has 32 bytes, got 31".
Whether referenced departments and types exist is checked by the store, inside its transaction.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import re
from collections.abc import Iterable
from datetime import datetime

from audit.events import SubjectId
from exchange.ed25519 import is_usable_public_key
from exchange.errors import ExchangeError, invalid_argument
from exchange.pki import key_id_for
from exchange.registry.model import (
    ED25519,
    CertificateType,
    ConsentIssuer,
    DataSource,
    Delegation,
    Department,
    Grant,
    Quota,
    SigningKey,
)
from exchange.registry.tables import CODE_LENGTH, NAME_LENGTH
from exchange.subject import validate_subject
from exchange.v1 import common_pb2

# Codes appear in certificates (O=), URLs and log lines: keep them to a plain charset.
CODE = re.compile(rf"[A-Za-z0-9][A-Za-z0-9_.\-]{{0,{CODE_LENGTH - 1}}}")
FIELD_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,63}")
HOST_NAME = re.compile(
    r"[A-Za-z0-9](?:[A-Za-z0-9\-]{0,61}[A-Za-z0-9])?(?:\.[A-Za-z0-9](?:[A-Za-z0-9\-]{0,61}[A-Za-z0-9])?)*"
)
# As long as LookupRequest.purpose may be (exchange/hub/policy.py MAX_CODE): a longer
# purpose could be granted but never asked for.
PURPOSE_LENGTH = CODE_LENGTH
DESCRIPTION_LENGTH = 1000
ED25519_KEY_BYTES = 32
# Quota numbers are stored as 32-bit integers; far beyond what one hub can serve anyway.
QUOTA_LIMIT = 1_000_000

SHARING_CLASSES = ("UNCONDITIONAL", "CONDITIONAL", "NOT_SHARED")
SUBJECT_KINDS = ("RESIDENT_ID", "UNIFIED_SOCIAL_CREDIT_CODE")


def check_code(path: str, value: str) -> None:
    """A code or id: 1-64 letters, digits, '_', '.', '-', starting with a letter or digit."""
    if not value:
        raise invalid_argument(f"{path}: required")
    if not CODE.fullmatch(value):
        raise invalid_argument(
            f"{path}: {value!r} must be 1-{CODE_LENGTH} letters, digits, '_', '.' or '-', "
            "starting with a letter or digit"
        )


def checked_department(department: Department) -> Department:
    """The department with each signing key's defaults filled in, or invalid_argument."""
    check_code("department.code", department.code)
    _check_text("department.name", department.name, NAME_LENGTH)
    keys = tuple(
        _checked_signing_key(f"department.signing_keys[{i}]", key)
        for i, key in enumerate(department.signing_keys)
    )
    _check_unique("department.signing_keys", (key.key_id for key in keys), "key id")
    _check_quota("department.quota", department.quota)
    return dataclasses.replace(department, signing_keys=keys)


def _check_quota(path: str, quota: Quota) -> None:
    for name in ("requests_per_second", "burst", "max_concurrent"):
        if getattr(quota, name) > QUOTA_LIMIT:
            raise invalid_argument(f"{path}.{name}: at most {QUOTA_LIMIT}")
    if quota.requests_per_second and quota.burst < 1:
        raise invalid_argument(f"{path}.burst: must be at least 1 when requests_per_second is set")
    if quota.burst and not quota.requests_per_second:
        raise invalid_argument(f"{path}.burst: has no effect without requests_per_second")


def checked_consent_issuer(issuer: ConsentIssuer) -> ConsentIssuer:
    """The consent issuer with each signing key's defaults filled in, or invalid_argument."""
    check_code("consent_issuer.id", issuer.id)
    _check_text("consent_issuer.name", issuer.name, NAME_LENGTH)
    keys = tuple(
        _checked_signing_key(f"consent_issuer.signing_keys[{i}]", key)
        for i, key in enumerate(issuer.signing_keys)
    )
    _check_unique("consent_issuer.signing_keys", (key.key_id for key in keys), "key id")
    return dataclasses.replace(issuer, signing_keys=keys)


def checked_delegation(delegation: Delegation) -> Delegation:
    """The delegation with its subject ids normalised, or invalid_argument naming the field."""
    check_code("delegation.id", delegation.id)
    principal = checked_subject("delegation.principal", delegation.principal)
    agent = checked_subject("delegation.agent", delegation.agent)
    if principal == agent:
        raise invalid_argument("delegation.agent: must be someone other than the principal")
    for i, code in enumerate(delegation.certificate_types):
        check_code(f"delegation.certificate_types[{i}]", code)
    _check_unique("delegation.certificate_types", delegation.certificate_types, "certificate type")
    for i, purpose in enumerate(delegation.purposes):
        _check_text(f"delegation.purposes[{i}]", purpose, PURPOSE_LENGTH)
    _check_unique("delegation.purposes", delegation.purposes, "purpose")
    _check_window(
        "delegation",
        ("valid_from", delegation.valid_from),
        ("valid_until", delegation.valid_until),
    )
    return dataclasses.replace(delegation, principal=principal, agent=agent)


def checked_subject(path: str, subject: SubjectId) -> SubjectId:
    """The subject normalised (validate_subject), or invalid_argument naming `path`."""
    try:
        kind = common_pb2.SubjectKind.Value(subject.kind)
    except ValueError:
        kind = common_pb2.SUBJECT_KIND_UNSPECIFIED
    try:
        return validate_subject(common_pb2.Subject(kind=kind, id=subject.id))
    except ExchangeError as error:
        # validate_subject names the request's field "subject"; here it is `path`.
        raise invalid_argument(path + error.message.removeprefix("subject")) from None


def _checked_signing_key(path: str, key: SigningKey) -> SigningKey:
    algorithm = key.algorithm or ED25519
    if algorithm != ED25519:
        raise invalid_argument(f"{path}.algorithm: {algorithm!r} is not supported, use {ED25519!r}")
    if len(key.public_key) != ED25519_KEY_BYTES:
        raise invalid_argument(
            f"{path}.public_key: an Ed25519 public key has {ED25519_KEY_BYTES} bytes, "
            f"got {len(key.public_key)}"
        )
    if not is_usable_public_key(key.public_key):
        raise invalid_argument(
            f"{path}.public_key: not a usable Ed25519 public key (not a point of the curve's "
            "prime-order group, as every key made from a private key is)"
        )
    derived = key_id_for(key.public_key)
    # Adapters name their key by this derived id; any other id would never match a document.
    if key.key_id and key.key_id != derived:
        raise invalid_argument(
            f"{path}.key_id: {key.key_id!r} does not identify this key, expected {derived!r} "
            "(or leave it empty)"
        )
    _check_window(path, ("not_before", key.not_before), ("not_after", key.not_after))
    return dataclasses.replace(key, key_id=derived, algorithm=algorithm)


def checked_certificate_type(certificate_type: CertificateType) -> CertificateType:
    """The certificate type unchanged, or invalid_argument naming what is wrong."""
    check_code("certificate_type.code", certificate_type.code)
    _check_text("certificate_type.name", certificate_type.name, NAME_LENGTH)
    check_code("certificate_type.issuing_department", certificate_type.issuing_department)
    if not certificate_type.fields:
        raise invalid_argument("certificate_type.fields: at least one field is required")
    for i, spec in enumerate(certificate_type.fields):
        _check_field_name(f"certificate_type.fields[{i}].name", spec.name)
        if len(spec.description) > DESCRIPTION_LENGTH:
            raise invalid_argument(
                f"certificate_type.fields[{i}].description: longer than {DESCRIPTION_LENGTH} "
                "characters"
            )
    _check_unique("certificate_type.fields", certificate_type.field_names(), "field")
    _check_enum("certificate_type.sharing_class", certificate_type.sharing_class, SHARING_CLASSES)
    _check_enum("certificate_type.subject_kind", certificate_type.subject_kind, SUBJECT_KINDS)
    return certificate_type


def checked_data_source(data_source: DataSource) -> DataSource:
    """The data source unchanged, or invalid_argument naming what is wrong."""
    check_code("data_source.id", data_source.id)
    check_code("data_source.issuing_department", data_source.issuing_department)
    if not data_source.certificate_types:
        raise invalid_argument("data_source.certificate_types: at least one type is required")
    for i, code in enumerate(data_source.certificate_types):
        check_code(f"data_source.certificate_types[{i}]", code)
    _check_unique(
        "data_source.certificate_types", data_source.certificate_types, "certificate type"
    )
    if not data_source.endpoints:
        raise invalid_argument("data_source.endpoints: at least one host:port is required")
    for i, endpoint in enumerate(data_source.endpoints):
        _check_endpoint(f"data_source.endpoints[{i}]", endpoint)
    _check_unique("data_source.endpoints", data_source.endpoints, "endpoint")
    if not data_source.tls_identity:
        raise invalid_argument("data_source.tls_identity: required")
    if len(data_source.tls_identity) > NAME_LENGTH:
        raise invalid_argument(f"data_source.tls_identity: longer than {NAME_LENGTH} characters")
    if not HOST_NAME.fullmatch(data_source.tls_identity):
        raise invalid_argument(
            f"data_source.tls_identity: {data_source.tls_identity!r} is not a certificate name"
        )
    return data_source


def checked_grant(grant: Grant) -> Grant:
    """The grant unchanged, or invalid_argument naming what is wrong."""
    check_code("grant.id", grant.id)
    check_code("grant.requesting_department", grant.requesting_department)
    check_code("grant.certificate_type", grant.certificate_type)
    if not grant.fields:
        raise invalid_argument("grant.fields: at least one field is required")
    for i, name in enumerate(grant.fields):
        _check_field_name(f"grant.fields[{i}]", name)
    _check_unique("grant.fields", grant.fields, "field")
    if not grant.purposes:
        raise invalid_argument("grant.purposes: at least one purpose is required")
    for i, purpose in enumerate(grant.purposes):
        _check_text(f"grant.purposes[{i}]", purpose, PURPOSE_LENGTH)
    _check_unique("grant.purposes", grant.purposes, "purpose")
    _check_window("grant", ("valid_from", grant.valid_from), ("valid_until", grant.valid_until))
    return grant


def _check_text(path: str, value: str, limit: int) -> None:
    if not value.strip():
        raise invalid_argument(f"{path}: required")
    if value != value.strip():
        raise invalid_argument(f"{path}: {value!r} has leading or trailing spaces")
    if len(value) > limit:
        raise invalid_argument(f"{path}: longer than {limit} characters")
    if not value.isprintable():
        raise invalid_argument(f"{path}: {value!r} contains control characters")


def _check_field_name(path: str, name: str) -> None:
    if not FIELD_NAME.fullmatch(name):
        raise invalid_argument(
            f"{path}: {name!r} must be 1-64 letters, digits or '_', not starting with a digit"
        )


def _check_enum(path: str, name: str, allowed: tuple[str, ...]) -> None:
    if name in allowed:
        return
    if name.endswith("_UNSPECIFIED"):
        raise invalid_argument(f"{path}: must be specified ({', '.join(allowed)})")
    raise invalid_argument(f"{path}: unknown value {name}, expected one of {', '.join(allowed)}")


def _check_unique(path: str, values: Iterable[str], what: str) -> None:
    seen: set[str] = set()
    for value in values:
        if value in seen:
            raise invalid_argument(f"{path}: {what} {value!r} is listed twice")
        seen.add(value)


def _check_window(
    path: str, start: tuple[str, datetime | None], end: tuple[str, datetime | None]
) -> None:
    (start_name, start_at), (end_name, end_at) = start, end
    if start_at is not None and end_at is not None and start_at >= end_at:
        raise invalid_argument(
            f"{path}.{end_name}: {end_at.isoformat()} is not after "
            f"{start_name} {start_at.isoformat()}"
        )


def _check_endpoint(path: str, endpoint: str) -> None:
    host, colon, port = endpoint.rpartition(":")
    if not colon or not host:
        raise invalid_argument(f"{path}: {endpoint!r} is not host:port")
    if not (port.isascii() and port.isdigit() and 0 < int(port) < 65536):
        raise invalid_argument(f"{path}: {endpoint!r} has no port between 1 and 65535")
    if host.startswith("[") and host.endswith("]"):
        try:
            ipaddress.IPv6Address(host[1:-1])
        except ValueError:
            raise invalid_argument(f"{path}: {host!r} is not an IPv6 address") from None
    elif not HOST_NAME.fullmatch(host):
        raise invalid_argument(f"{path}: {host!r} is not a host name or IPv4 address")
