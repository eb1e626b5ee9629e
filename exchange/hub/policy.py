"""What one lookup may release: the request checked for shape, then against the catalogue.

`check_request` refuses malformed requests before anything is looked up; `decide` applies the
catalogue (type, sharing class), the caller's grants (in force now, for the purpose), the
delegation the operator acts under (代办), and the consent rule for conditional types, and says
which grant releases which fields. Requested fields outside the grant are withheld, not
refused: the released document shows what was released. A consent is only verified here;
spending a single-use one (exchange/consent_uses.py) is the lookup's last step before routing.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime

from audit.events import SubjectId
from exchange.consent import Consent, verify_consent
from exchange.errors import invalid_argument, not_found, permission_denied
from exchange.registry.model import CertificateType, Delegation, Grant
from exchange.registry.snapshot import RegistrySnapshot
from exchange.subject import validate_subject
from exchange.v1 import lookup_pb2

# Limits on what a request may carry. Codes match the registry's (64 characters), so
# anything longer cannot name a registered type, field or grant purpose anyway.
MAX_REQUEST_ID = 64
MAX_CODE = 64  # certificate type, purpose, field names
MAX_TEXT = 64  # matter_id, operator_id, delegation_id
MAX_CONSENT_TOKEN = 4096
MAX_FIELDS = 64

SHAREABLE = {"UNCONDITIONAL", "CONDITIONAL"}


@dataclass(frozen=True)
class CheckedRequest:
    """A lookup request whose shape is valid: ids normalised, requested fields de-duplicated."""

    request_id: str
    certificate_type: str
    subject: SubjectId
    fields: tuple[str, ...]
    purpose: str
    consent_token: str
    delegation_id: str


@dataclass(frozen=True)
class Release:
    """The policy's yes: the type, the grant it rests on, and the fields it releases."""

    certificate_type: CertificateType
    grant: Grant
    fields: tuple[str, ...]
    consent: Consent | None = None  # verified, for a conditional type
    delegation: Delegation | None = None  # checked, when the request names one


def request_id_of(request: lookup_pb2.LookupRequest) -> str:
    """The caller's request id, or a fresh one when empty; refuses ids that cannot be logged."""
    if not request.request_id:
        return uuid.uuid4().hex
    if len(request.request_id) > MAX_REQUEST_ID:
        raise invalid_argument(f"request_id: at most {MAX_REQUEST_ID} characters")
    if not all("!" <= c <= "~" for c in request.request_id):
        raise invalid_argument("request_id: only printable ASCII characters, no spaces")
    return request.request_id


def check_request(request: lookup_pb2.LookupRequest, request_id: str) -> CheckedRequest:
    """The request (known by `request_id`, see request_id_of) with a valid shape, or
    invalid_argument naming the first problem."""
    _text("certificate_type", request.certificate_type, MAX_CODE, required=True)
    if not request.HasField("subject"):
        raise invalid_argument("subject: required")
    subject = validate_subject(request.subject)
    if len(request.fields) > MAX_FIELDS:
        raise invalid_argument(f"fields: at most {MAX_FIELDS} names")
    for name in request.fields:
        _text("fields", name, MAX_CODE, required=True)
    _text("purpose", request.purpose, MAX_CODE, required=True)
    _text("matter_id", request.matter_id, MAX_TEXT)
    _text("operator_id", request.operator_id, MAX_TEXT)
    _text("delegation_id", request.delegation_id, MAX_TEXT)
    _text("consent_token", request.consent_token, MAX_CONSENT_TOKEN)
    return CheckedRequest(
        request_id=request_id,
        certificate_type=request.certificate_type,
        subject=subject,
        fields=tuple(dict.fromkeys(request.fields)),
        purpose=request.purpose,
        consent_token=request.consent_token,
        delegation_id=request.delegation_id,
    )


def certificate_type_for(snapshot: RegistrySnapshot, request: CheckedRequest) -> CertificateType:
    """The registered type the request names, checked against its subject kind and schema."""
    certificate_type = snapshot.certificate_type(request.certificate_type)
    if certificate_type is None:
        raise not_found(f"certificate type {request.certificate_type!r} is not registered")
    if request.subject.kind != certificate_type.subject_kind:
        raise invalid_argument(
            f"subject.kind: {certificate_type.code!r} records are about "
            f"{certificate_type.subject_kind}, not {request.subject.kind}"
        )
    schema = set(certificate_type.field_names())
    for name in request.fields:
        if name not in schema:
            raise invalid_argument(f"fields: {name!r} is not a field of {certificate_type.code!r}")
    return certificate_type


def decide(
    snapshot: RegistrySnapshot,
    certificate_type: CertificateType,
    request: CheckedRequest,
    department: str,
    now: datetime,
) -> Release:
    """The grant and fields `department` gets for `request`, or permission_denied saying why."""
    code = certificate_type.code
    if certificate_type.sharing_class not in SHAREABLE:
        raise permission_denied(f"{code!r} is not shared through the exchange")
    in_force = [g for g in snapshot.grants_for(department, code) if g.is_valid_at(now)]
    if not in_force:
        raise permission_denied(f"no grant for department {department!r} on {code!r}")
    for_purpose = [g for g in in_force if request.purpose in g.purposes]
    if not for_purpose:
        raise permission_denied(
            f"purpose {request.purpose!r} is not granted to department {department!r} on {code!r}"
        )
    # Several grants may cover the purpose: rest on the one releasing most of what was asked.
    grant = max(for_purpose, key=lambda g: len(_released(g, request.fields)))
    fields = _released(grant, request.fields)
    if not fields:
        raise permission_denied(
            f"none of the requested fields is granted to department {department!r} on {code!r}"
        )
    delegation = _delegation(snapshot, request, code, now) if request.delegation_id else None
    consent = None
    if certificate_type.sharing_class == "CONDITIONAL":
        consent = _consent(snapshot, request, code, department, now)
    return Release(certificate_type, grant, fields, consent=consent, delegation=delegation)


def _delegation(
    snapshot: RegistrySnapshot, request: CheckedRequest, code: str, now: datetime
) -> Delegation:
    """The registered delegation the operator acts under, if it covers this lookup now."""
    name = request.delegation_id
    delegation = snapshot.delegation(name)
    if delegation is None:
        raise permission_denied(f"delegation {name!r} is not registered")
    if delegation.principal != request.subject:
        raise permission_denied(f"delegation {name!r} is for another principal")
    if delegation.revoked:
        raise permission_denied(f"delegation {name!r} is revoked")
    if not delegation.is_valid_at(now):
        raise permission_denied(f"delegation {name!r} is not in force")
    if not delegation.covers(code, request.purpose):
        raise permission_denied(
            f"delegation {name!r} does not cover {code!r} for {request.purpose!r}"
        )
    return delegation


def _consent(
    snapshot: RegistrySnapshot,
    request: CheckedRequest,
    code: str,
    department: str,
    now: datetime,
) -> Consent:
    """The request's consent token, verified to bind this subject, department, type, purpose."""
    if not request.consent_token:
        raise permission_denied(f"consent required: {code!r} is shared only with consent")
    return verify_consent(
        request.consent_token,
        snapshot,
        now,
        subject=request.subject,
        department=department,
        certificate_type=code,
        purpose=request.purpose,
    )


def _released(grant: Grant, requested: tuple[str, ...]) -> tuple[str, ...]:
    if not requested:
        return grant.fields
    granted = set(grant.fields)
    return tuple(name for name in requested if name in granted)


def _text(name: str, value: str, limit: int, *, required: bool = False) -> None:
    if required and not value:
        raise invalid_argument(f"{name}: required")
    if len(value) > limit:
        raise invalid_argument(f"{name}: at most {limit} characters")
    if not value.isprintable():
        raise invalid_argument(f"{name}: contains control characters")
