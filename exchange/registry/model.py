"""The registry's records as frozen dataclasses, and their proto and JSON forms.

Departments (with their document signing keys and lookup quota), certificate types, data
sources and grants; consent issuers and delegations (proxy handling, 代办).

Enums are kept as their proto names ("UNCONDITIONAL", "RESIDENT_ID"); a number the proto does
not define becomes its decimal string, so validation can name it instead of the conversion
failing. Datetimes are timezone-aware UTC; None means "open on that side".
"""

from __future__ import annotations

import base64
import dataclasses
import json
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, TypeVar

from google.protobuf import timestamp_pb2

from audit.events import SubjectId
from exchange.errors import invalid_argument
from exchange.v1 import common_pb2, registry_pb2

ED25519 = "Ed25519"

N = TypeVar("N", bound=int)


def _enum_name(name_of: Callable[[N], str], number: N) -> str:
    try:
        return name_of(number)
    except ValueError:
        return str(number)


def _from_timestamp(message: Any, field: str) -> datetime | None:
    if not message.HasField(field):
        return None
    timestamp: timestamp_pb2.Timestamp = getattr(message, field)
    try:
        return timestamp.ToDatetime(tzinfo=UTC)
    except (ValueError, OverflowError):
        raise invalid_argument(f"{field}: timestamp out of range") from None


def _to_timestamp(when: datetime | None) -> timestamp_pb2.Timestamp | None:
    if when is None:
        return None
    timestamp = timestamp_pb2.Timestamp()
    timestamp.FromDatetime(when)
    return timestamp


def _within(when: datetime, start: datetime | None, end: datetime | None) -> bool:
    """Whether `when` lies in [start, end), either side open when None."""
    return (start is None or start <= when) and (end is None or when < end)


@dataclass(frozen=True)
class SigningKey:
    """A public key a department's adapter node signs documents with."""

    key_id: str
    public_key: bytes
    algorithm: str = ED25519
    not_before: datetime | None = None
    not_after: datetime | None = None

    def is_valid_at(self, when: datetime) -> bool:
        """Whether a document signed at `when` verifies with this key ([not_before, not_after))."""
        return _within(when, self.not_before, self.not_after)

    @classmethod
    def from_proto(cls, message: registry_pb2.SigningKey) -> SigningKey:
        """The record a SigningKey message describes (not validated)."""
        return cls(
            key_id=message.key_id,
            public_key=message.public_key,
            algorithm=message.algorithm,
            not_before=_from_timestamp(message, "not_before"),
            not_after=_from_timestamp(message, "not_after"),
        )

    def to_proto(self) -> registry_pb2.SigningKey:
        """This key as a SigningKey message."""
        return registry_pb2.SigningKey(
            key_id=self.key_id,
            public_key=self.public_key,
            algorithm=self.algorithm,
            not_before=_to_timestamp(self.not_before),
            not_after=_to_timestamp(self.not_after),
        )


@dataclass(frozen=True)
class Quota:
    """Limits on a department's lookups; 0 means unlimited on that count."""

    requests_per_second: int = 0
    burst: int = 0
    max_concurrent: int = 0

    @property
    def limited(self) -> bool:
        """Whether any limit is set."""
        return bool(self.requests_per_second or self.max_concurrent)

    @classmethod
    def from_proto(cls, message: registry_pb2.Quota) -> Quota:
        """The limits a Quota message describes (not validated)."""
        return cls(message.requests_per_second, message.burst, message.max_concurrent)

    def to_proto(self) -> registry_pb2.Quota:
        """These limits as a Quota message."""
        return registry_pb2.Quota(
            requests_per_second=self.requests_per_second,
            burst=self.burst,
            max_concurrent=self.max_concurrent,
        )


UNLIMITED = Quota()


@dataclass(frozen=True)
class Department:
    """A department: its code is also the O= of its certificates."""

    code: str
    name: str
    signing_keys: tuple[SigningKey, ...] = ()
    quota: Quota = UNLIMITED

    @classmethod
    def from_proto(cls, message: registry_pb2.Department) -> Department:
        """The record a Department message describes (not validated)."""
        return cls(
            code=message.code,
            name=message.name,
            signing_keys=tuple(SigningKey.from_proto(key) for key in message.signing_keys),
            quota=Quota.from_proto(message.quota),
        )

    def to_proto(self) -> registry_pb2.Department:
        """This department as a Department message (no quota message when unlimited)."""
        return registry_pb2.Department(
            code=self.code,
            name=self.name,
            signing_keys=[key.to_proto() for key in self.signing_keys],
            quota=self.quota.to_proto() if self.quota != UNLIMITED else None,
        )


@dataclass(frozen=True)
class FieldSpec:
    """One field of a certificate type's schema."""

    name: str
    description: str = ""


@dataclass(frozen=True)
class CertificateType:
    """A kind of certificate or material, its issuer, schema and sharing class."""

    code: str
    name: str
    issuing_department: str
    fields: tuple[FieldSpec, ...]
    sharing_class: str
    subject_kind: str

    def field_names(self) -> tuple[str, ...]:
        """The names of the type's fields, in schema order."""
        return tuple(spec.name for spec in self.fields)

    @classmethod
    def from_proto(cls, message: registry_pb2.CertificateType) -> CertificateType:
        """The record a CertificateType message describes (not validated)."""
        return cls(
            code=message.code,
            name=message.name,
            issuing_department=message.issuing_department,
            fields=tuple(FieldSpec(spec.name, spec.description) for spec in message.fields),
            sharing_class=_enum_name(common_pb2.SharingClass.Name, message.sharing_class),
            subject_kind=_enum_name(common_pb2.SubjectKind.Name, message.subject_kind),
        )

    def to_proto(self) -> registry_pb2.CertificateType:
        """This type as a CertificateType message."""
        return registry_pb2.CertificateType(
            code=self.code,
            name=self.name,
            issuing_department=self.issuing_department,
            fields=[
                registry_pb2.FieldSpec(name=f.name, description=f.description) for f in self.fields
            ],
            sharing_class=common_pb2.SharingClass.Value(self.sharing_class),
            subject_kind=common_pb2.SubjectKind.Value(self.subject_kind),
        )


@dataclass(frozen=True)
class DataSource:
    """An adapter node serving some certificate types of its department, with its replicas."""

    id: str
    issuing_department: str
    certificate_types: tuple[str, ...]
    endpoints: tuple[str, ...]
    tls_identity: str
    enabled: bool = True

    @classmethod
    def from_proto(cls, message: registry_pb2.DataSource) -> DataSource:
        """The record a DataSource message describes (not validated)."""
        return cls(
            id=message.id,
            issuing_department=message.issuing_department,
            certificate_types=tuple(message.certificate_types),
            endpoints=tuple(message.endpoints),
            tls_identity=message.tls_identity,
            enabled=message.enabled,
        )

    def to_proto(self) -> registry_pb2.DataSource:
        """This data source as a DataSource message."""
        return registry_pb2.DataSource(
            id=self.id,
            issuing_department=self.issuing_department,
            certificate_types=self.certificate_types,
            endpoints=self.endpoints,
            tls_identity=self.tls_identity,
            enabled=self.enabled,
        )


@dataclass(frozen=True)
class Grant:
    """What a requesting department may obtain: a type, some of its fields, for some purposes."""

    id: str
    requesting_department: str
    certificate_type: str
    fields: tuple[str, ...]
    purposes: tuple[str, ...]
    valid_from: datetime | None = None
    valid_until: datetime | None = None

    def is_valid_at(self, when: datetime) -> bool:
        """Whether the grant is in force at `when` ([valid_from, valid_until))."""
        return _within(when, self.valid_from, self.valid_until)

    @classmethod
    def from_proto(cls, message: registry_pb2.Grant) -> Grant:
        """The record a Grant message describes (not validated)."""
        return cls(
            id=message.id,
            requesting_department=message.requesting_department,
            certificate_type=message.certificate_type,
            fields=tuple(message.fields),
            purposes=tuple(message.purposes),
            valid_from=_from_timestamp(message, "valid_from"),
            valid_until=_from_timestamp(message, "valid_until"),
        )

    def to_proto(self) -> registry_pb2.Grant:
        """This grant as a Grant message."""
        return registry_pb2.Grant(
            id=self.id,
            requesting_department=self.requesting_department,
            certificate_type=self.certificate_type,
            fields=self.fields,
            purposes=self.purposes,
            valid_from=_to_timestamp(self.valid_from),
            valid_until=_to_timestamp(self.valid_until),
        )


@dataclass(frozen=True)
class ConsentIssuer:
    """Who may sign consent tokens (e.g. the citizen portal), with its public keys."""

    id: str
    name: str
    signing_keys: tuple[SigningKey, ...] = ()

    @classmethod
    def from_proto(cls, message: registry_pb2.ConsentIssuer) -> ConsentIssuer:
        """The record a ConsentIssuer message describes (not validated)."""
        return cls(
            id=message.id,
            name=message.name,
            signing_keys=tuple(SigningKey.from_proto(key) for key in message.signing_keys),
        )

    def to_proto(self) -> registry_pb2.ConsentIssuer:
        """This issuer as a ConsentIssuer message."""
        return registry_pb2.ConsentIssuer(
            id=self.id, name=self.name, signing_keys=[key.to_proto() for key in self.signing_keys]
        )


@dataclass(frozen=True)
class Delegation:
    """Proxy handling (代办): an agent may ask for a principal's records, within a scope."""

    id: str
    principal: SubjectId
    agent: SubjectId
    certificate_types: tuple[str, ...] = ()  # empty: any type
    purposes: tuple[str, ...] = ()  # empty: any purpose
    valid_from: datetime | None = None
    valid_until: datetime | None = None
    revoked: bool = False

    def is_valid_at(self, when: datetime) -> bool:
        """Whether the delegation is in force at `when`: not revoked, inside its window."""
        return not self.revoked and _within(when, self.valid_from, self.valid_until)

    def covers(self, certificate_type: str, purpose: str) -> bool:
        """Whether the agent may ask for `certificate_type` for `purpose` under it."""
        return (not self.certificate_types or certificate_type in self.certificate_types) and (
            not self.purposes or purpose in self.purposes
        )

    def audit_view(self) -> Delegation:
        """A copy for the audit log's change records, which keep no subject id in clear.

        The entry itself carries the principal pseudonymised and encrypted (AuditEvent.subject);
        the ids in the change JSON keep their last four characters, enough to tell records apart.
        """
        return dataclasses.replace(
            self, principal=_masked(self.principal), agent=_masked(self.agent)
        )

    @classmethod
    def from_proto(cls, message: registry_pb2.Delegation) -> Delegation:
        """The record a Delegation message describes (not validated)."""
        return cls(
            id=message.id,
            principal=_subject_from_proto(message.principal),
            agent=_subject_from_proto(message.agent),
            certificate_types=tuple(message.certificate_types),
            purposes=tuple(message.purposes),
            valid_from=_from_timestamp(message, "valid_from"),
            valid_until=_from_timestamp(message, "valid_until"),
            revoked=message.revoked,
        )

    def to_proto(self) -> registry_pb2.Delegation:
        """This delegation as a Delegation message."""
        return registry_pb2.Delegation(
            id=self.id,
            principal=_subject_to_proto(self.principal),
            agent=_subject_to_proto(self.agent),
            certificate_types=self.certificate_types,
            purposes=self.purposes,
            valid_from=_to_timestamp(self.valid_from),
            valid_until=_to_timestamp(self.valid_until),
            revoked=self.revoked,
        )


def _subject_from_proto(message: common_pb2.Subject) -> SubjectId:
    return SubjectId(_enum_name(common_pb2.SubjectKind.Name, message.kind), message.id)


def _subject_to_proto(subject: SubjectId) -> common_pb2.Subject:
    return common_pb2.Subject(kind=common_pb2.SubjectKind.Value(subject.kind), id=subject.id)


def _masked(subject: SubjectId) -> SubjectId:
    return SubjectId(subject.kind, "*" * max(0, len(subject.id) - 4) + subject.id[-4:])


Record = Department | CertificateType | DataSource | Grant | ConsentIssuer | Delegation


def to_json(record: Record | SigningKey | FieldSpec) -> str:
    """The record as stable JSON (sorted keys; bytes as base64; datetimes ISO 8601), for audit.

    A record with an `audit_view()` (a delegation) is written as that view.
    """
    if isinstance(record, Delegation):
        record = record.audit_view()
    return json.dumps(dataclasses.asdict(record), sort_keys=True, default=_json_value)


def _json_value(value: object) -> str:
    if isinstance(value, bytes):
        return base64.b64encode(value).decode("ascii")
    if isinstance(value, datetime):
        return value.isoformat()
    raise TypeError(f"{type(value).__name__} is not JSON serialisable")
