"""Whether a document an adapter node returned may be released: origin, binding and field set.

The signature is checked over the exact payload bytes with the issuer's registered key, and
only then is the payload parsed: nothing in an unverified payload is trusted. The parsed
document must answer exactly this request (type, subject, issuer, request id), still be valid,
and carry no field beyond those released, nor any this hub cannot read. Any failure is an
`IntegrityError` (DATA_LOSS): the document is withheld and the failure audited.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import grpc
from google.protobuf.message import DecodeError
from google.protobuf.timestamp_pb2 import Timestamp

from audit.events import SubjectId
from exchange import ed25519
from exchange.errors import ExchangeError
from exchange.registry.model import ED25519, SigningKey
from exchange.registry.snapshot import RegistrySnapshot
from exchange.v1 import common_pb2

# A document signed further in the future than this is refused: clocks disagree too much.
CLOCK_SKEW = timedelta(minutes=5)

# How much of a value a node chose an integrity error quotes.
SHOWN_CHARACTERS = 64

_SUBJECT_KINDS = {
    common_pb2.RESIDENT_ID: "RESIDENT_ID",
    common_pb2.UNIFIED_SOCIAL_CREDIT_CODE: "UNIFIED_SOCIAL_CREDIT_CODE",
}


class IntegrityError(ExchangeError):
    """A returned document failed verification; it must not be released."""

    def __init__(self, message: str) -> None:
        super().__init__(grpc.StatusCode.DATA_LOSS, message)


@dataclass(frozen=True)
class Expected:
    """What the document must answer: the request as the hub sent it to the adapter."""

    certificate_type: str
    subject: SubjectId
    issuer: str
    request_id: str
    fields: tuple[str, ...]


def payload_digest(signed: common_pb2.SignedDocument) -> str:
    """SHA-256 hex of the signed payload, as the audit log records it."""
    return hashlib.sha256(signed.payload).hexdigest()


def verify_document(
    signed: common_pb2.SignedDocument,
    expected: Expected,
    snapshot: RegistrySnapshot,
    now: datetime | None = None,
) -> common_pb2.Document:
    """The verified document inside `signed`; raises IntegrityError naming the first failure."""
    now = now or datetime.now(UTC)
    if signed.algorithm != ED25519:
        raise IntegrityError(f"unsupported signature algorithm {_shown(signed.algorithm)}")
    key = snapshot.signing_key(expected.issuer, signed.key_id)
    if key is None:
        raise IntegrityError(
            f"signing key {_shown(signed.key_id)} is not registered for {expected.issuer!r}"
        )
    if key.algorithm != ED25519:
        raise IntegrityError(f"signing key {key.key_id!r} is not an {ED25519} key")
    if not ed25519.verify(key.public_key, signed.signature, signed.payload):
        raise IntegrityError("issuer signature did not verify")
    document = _parse(signed.payload)
    _check_signing_time(document, key, now)
    _check_binding(document, expected)
    if document.HasField("valid_until") and _time(document.valid_until) <= now:
        raise IntegrityError("document validity has ended")
    extra = sorted(set(document.fields) - set(expected.fields))
    if extra:
        raise IntegrityError(f"document carries fields not released: {', '.join(extra)}")
    return document


def released_copy(signed: common_pb2.SignedDocument) -> common_pb2.SignedDocument:
    """What the caller gets of a verified document: the signed payload, its signature and
    their names, and nothing else the node may have put beside them (unknown fields)."""
    return common_pb2.SignedDocument(
        payload=signed.payload,
        key_id=signed.key_id,
        algorithm=signed.algorithm,
        signature=signed.signature,
    )


def _shown(value: str) -> str:
    """`value` quoted for a message, cut short: a node chooses it, and messages go into the
    caller's trailers and the audit log."""
    return repr(value) if len(value) <= SHOWN_CHARACTERS else f"{value[:SHOWN_CHARACTERS]!r}…"


def _time(timestamp: Timestamp) -> datetime:
    try:
        return timestamp.ToDatetime(tzinfo=UTC)
    except (ValueError, OverflowError):
        raise IntegrityError("document has an invalid timestamp") from None


def _parse(payload: bytes) -> common_pb2.Document:
    document = common_pb2.Document()
    try:
        document.ParseFromString(payload)
    except DecodeError:
        raise IntegrityError("signed payload is not a Document") from None
    # The payload goes to the caller as it is, so nothing in it may escape the checks below:
    # no field this hub does not know (hidden data, or a node on a newer schema) and no field
    # given twice (the parse keeps the last; another reader may take the first). As any
    # protobuf library writes it, a Document is exactly as long as its known fields.
    document.DiscardUnknownFields()
    if document.ByteSize() != len(payload):
        raise IntegrityError(
            "signed payload holds more than a Document: a field unknown or repeated"
        )
    return document


def _check_signing_time(document: common_pb2.Document, key: SigningKey, now: datetime) -> None:
    if not document.HasField("signed_at"):
        raise IntegrityError("document has no signing time")
    signed_at = _time(document.signed_at)
    # The node signs each copy when the hub asks for it. A signing time far from now is a
    # replayed or backdated copy, e.g. by a holder of a retired key claiming a time inside
    # its window; so the key must be valid now, too.
    if abs(signed_at - now) > CLOCK_SKEW:
        raise IntegrityError("document was not signed for this request just now")
    if not (key.is_valid_at(signed_at) and key.is_valid_at(now)):
        raise IntegrityError(
            f"signing key {key.key_id!r} was not valid when the document was signed"
        )


def _check_binding(document: common_pb2.Document, expected: Expected) -> None:
    if document.certificate_type != expected.certificate_type:
        raise IntegrityError(
            f"document is a {_shown(document.certificate_type)}, "
            f"not a {expected.certificate_type!r}"
        )
    kind = _SUBJECT_KINDS.get(document.subject.kind, "")
    if kind != expected.subject.kind or document.subject.id.upper() != expected.subject.id:
        raise IntegrityError("document is about another subject")
    if document.issuer != expected.issuer:
        raise IntegrityError(
            f"document issuer {_shown(document.issuer)} is not {expected.issuer!r}"
        )
    if document.request_id != expected.request_id:
        raise IntegrityError("document answers another request")
