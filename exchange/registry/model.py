"""The registry's records as frozen dataclasses, and their proto and JSON forms.

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
    return timestamp.ToDatetime(tzinfo=UTC)


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
class Department:
    """A department: its code is also the O= of its certificates."""

    code: str
    name: str
    signing_keys: tuple[SigningKey, ...] = ()

    @classmethod
    def from_proto(cls, message: registry_pb2.Department) -> Department:
        """The record a Department message describes (not validated)."""
        return cls(
            code=message.code,
            name=message.name,
            signing_keys=tuple(SigningKey.from_proto(key) for key in message.signing_keys),
        )

    def to_proto(self) -> registry_pb2.Department:
        """This department as a Department message."""
        return registry_pb2.Department(
            code=self.code,
            name=self.name,
            signing_keys=[key.to_proto() for key in self.signing_keys],
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


Record = Department | CertificateType | DataSource | Grant


def to_json(record: Record | SigningKey | FieldSpec) -> str:
    """The record as stable JSON (sorted keys; bytes as base64; datetimes ISO 8601), for audit."""
    return json.dumps(dataclasses.asdict(record), sort_keys=True, default=_json_value)


def _json_value(value: object) -> str:
    if isinstance(value, bytes):
        return base64.b64encode(value).decode("ascii")
    if isinstance(value, datetime):
        return value.isoformat()
    raise TypeError(f"{type(value).__name__} is not JSON serialisable")
