"""Consent tokens for conditional (有条件共享) certificate types: issuing them and checking them.

A token is `base64url(serialized Consent) "." base64url(Ed25519 signature)`, unpadded
(proto/exchange/v1/consent.proto). A registered consent issuer (the citizen portal, say) signs
what the subject agreed to: which department may obtain which certificate types about them,
for which purposes, until when. The hub checks the signature over exactly the decoded bytes
against the issuer's registered key, then the token's window, then that it binds this lookup's
subject, requesting department, type and purpose. Whether a single-use token was already
spent is exchange/consent_uses.py's job.

Every refusal is PERMISSION_DENIED with a message saying what is wrong, never what the token
would have needed to say instead (the subject's id never appears in a message).
"""

from __future__ import annotations

import argparse
import base64
import binascii
import datetime as dt
import json
import re
import secrets
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric import ed25519
from google.protobuf import message as protobuf_message

from audit.events import SubjectId
from exchange.errors import ExchangeError, permission_denied
from exchange.pki import key_id_for, load_signing_key
from exchange.registry.model import ConsentIssuer, SigningKey
from exchange.subject import validate_subject
from exchange.v1 import common_pb2, consent_pb2

MAX_TOKEN_LENGTH = 4096
SIGNATURE_BYTES = 64
# Tolerates small clock differences between the issuer and the hub.
CLOCK_SKEW = dt.timedelta(seconds=60)
MAX_TTL = dt.timedelta(days=366)
CONSENT_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.:\-]{0,63}")
CODE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.\-]{0,63}")
_BASE64URL = re.compile(r"[A-Za-z0-9_\-]+")


@dataclass(frozen=True)
class Consent:
    """A verified consent: what the subject agreed to, and who vouched for it."""

    consent_id: str
    issuer: str
    key_id: str
    subject: SubjectId
    requesting_department: str
    certificate_types: tuple[str, ...]
    purposes: tuple[str, ...]
    issued_at: dt.datetime
    expires_at: dt.datetime
    reusable: bool


class ConsentKeys(Protocol):
    """Where the registered consent issuers and their keys are looked up (a RegistrySnapshot)."""

    def consent_issuer(self, id: str) -> ConsentIssuer | None: ...

    def consent_key(self, issuer: str, key_id: str) -> SigningKey | None: ...


def issue_consent(
    private_key: ed25519.Ed25519PrivateKey,
    issuer_id: str,
    key_id: str,
    subject: SubjectId,
    requesting_department: str,
    certificate_types: Sequence[str],
    purposes: Sequence[str],
    ttl: dt.timedelta,
    reusable: bool = False,
    *,
    now: dt.datetime | None = None,
    consent_id: str | None = None,
) -> str:
    """A signed consent token; `consent_id` (the nonce) is random unless given.

    Raises ValueError for what no hub would accept: an empty type or purpose list, a TTL
    that is not positive or longer than MAX_TTL.
    """
    if not certificate_types or not purposes:
        raise ValueError("a consent names at least one certificate type and one purpose")
    if not dt.timedelta(0) < ttl <= MAX_TTL:
        raise ValueError(f"ttl must be positive and at most {MAX_TTL.days} days")
    issued_at = (now or dt.datetime.now(dt.UTC)).replace(microsecond=0)
    consent = consent_pb2.Consent(
        consent_id=consent_id or f"c-{secrets.token_hex(16)}",
        issuer=issuer_id,
        key_id=key_id,
        subject=common_pb2.Subject(kind=common_pb2.SubjectKind.Value(subject.kind), id=subject.id),
        requesting_department=requesting_department,
        certificate_types=list(certificate_types),
        purposes=list(purposes),
        reusable=reusable,
    )
    consent.issued_at.FromDatetime(issued_at)
    consent.expires_at.FromDatetime(issued_at + ttl)
    return encode_token(consent.SerializeToString(), private_key)


def encode_token(payload: bytes, private_key: ed25519.Ed25519PrivateKey) -> str:
    """`payload` (a serialized Consent) signed and encoded as a token."""
    return f"{_b64(payload)}.{_b64(private_key.sign(payload))}"


def verify_consent(
    token: str,
    keys: ConsentKeys,
    now: dt.datetime,
    *,
    subject: SubjectId,
    department: str,
    certificate_type: str,
    purpose: str,
) -> Consent:
    """The token's consent if it is genuine, in force and binds exactly this lookup.

    Raises permission_denied naming the first problem: a malformed token, an unknown issuer
    or key, a signature that does not verify, a key outside its window, not yet valid,
    expired, valid for longer than MAX_TTL, another subject, another department, another
    type, another purpose.
    """
    payload, signature = decode_token(token)
    consent = _parse(payload)
    if keys.consent_issuer(consent.issuer) is None:
        raise permission_denied(f"consent: unknown consent issuer {consent.issuer!r}")
    key = keys.consent_key(consent.issuer, consent.key_id)
    if key is None:
        raise permission_denied(
            f"consent: issuer {consent.issuer!r} has no registered key {consent.key_id!r}"
        )
    try:
        ed25519.Ed25519PublicKey.from_public_bytes(key.public_key).verify(signature, payload)
    except (InvalidSignature, ValueError):
        raise permission_denied("consent: the signature does not verify") from None
    if not (key.is_valid_at(consent.issued_at) and key.is_valid_at(now)):
        raise permission_denied(
            f"consent: key {consent.key_id!r} of issuer {consent.issuer!r} is outside its "
            "validity window"
        )
    if consent.issued_at > now + CLOCK_SKEW:
        raise permission_denied(f"consent: not valid before {consent.issued_at.isoformat()}")
    if now >= consent.expires_at:
        raise permission_denied(f"consent: expired at {consent.expires_at.isoformat()}")
    if consent.expires_at - consent.issued_at > MAX_TTL:
        # issue_consent never signs one; an issuer's own tooling might, by mistake or not.
        raise permission_denied(f"consent: valid for longer than {MAX_TTL.days} days")
    _check_binding(consent, subject, department, certificate_type, purpose)
    return consent


def decode_token(token: str) -> tuple[bytes, bytes]:
    """The payload and signature bytes of a token; permission_denied when it is malformed."""
    if len(token) > MAX_TOKEN_LENGTH:
        raise _malformed(f"longer than {MAX_TOKEN_LENGTH} characters")
    parts = token.split(".")
    if len(parts) != 2 or not all(_BASE64URL.fullmatch(part) for part in parts):
        raise _malformed("expected two unpadded base64url parts joined by '.'")
    try:
        payload, signature = (base64.urlsafe_b64decode(p + "=" * (-len(p) % 4)) for p in parts)
    except (binascii.Error, ValueError):
        raise _malformed("not base64url") from None
    if len(signature) != SIGNATURE_BYTES:
        raise _malformed(f"an Ed25519 signature has {SIGNATURE_BYTES} bytes, got {len(signature)}")
    return payload, signature


def _parse(payload: bytes) -> Consent:
    message = consent_pb2.Consent()
    try:
        message.ParseFromString(payload)
    except protobuf_message.DecodeError:
        raise _malformed("the payload is not a Consent message") from None
    if not CONSENT_ID.fullmatch(message.consent_id):
        raise _malformed("consent_id: 1-64 letters, digits, '_', '.', ':' or '-'")
    for name in ("issuer", "key_id", "requesting_department"):
        if not CODE.fullmatch(getattr(message, name)):
            raise _malformed(f"{name}: 1-64 letters, digits, '_', '.' or '-'")
    if not message.certificate_types or not message.purposes:
        raise _malformed("names no certificate type or no purpose")
    if not (message.HasField("issued_at") and message.HasField("expires_at")):
        raise _malformed("issued_at and expires_at are required")
    try:
        subject = validate_subject(message.subject)
        issued_at = message.issued_at.ToDatetime(tzinfo=dt.UTC)
        expires_at = message.expires_at.ToDatetime(tzinfo=dt.UTC)
    except ExchangeError as error:
        raise _malformed(error.message) from None
    except (ValueError, OverflowError):
        raise _malformed("a timestamp is out of range") from None
    if expires_at <= issued_at:
        raise _malformed("expires_at is not after issued_at")
    return Consent(
        consent_id=message.consent_id,
        issuer=message.issuer,
        key_id=message.key_id,
        subject=subject,
        requesting_department=message.requesting_department,
        certificate_types=tuple(message.certificate_types),
        purposes=tuple(message.purposes),
        issued_at=issued_at,
        expires_at=expires_at,
        reusable=message.reusable,
    )


def _check_binding(
    consent: Consent, subject: SubjectId, department: str, certificate_type: str, purpose: str
) -> None:
    if consent.subject != subject:
        raise permission_denied("consent: given for another subject")
    if consent.requesting_department != department:
        raise permission_denied(
            f"consent: given to department {consent.requesting_department!r}, not {department!r}"
        )
    if certificate_type not in consent.certificate_types:
        raise permission_denied(f"consent: does not cover certificate type {certificate_type!r}")
    if purpose not in consent.purposes:
        raise permission_denied(f"consent: does not cover purpose {purpose!r}")


def _malformed(problem: str) -> ExchangeError:
    return permission_denied(f"consent: malformed token ({problem})")


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


# --- exchange consent ... ---------------------------------------------------------------------

_TTL = re.compile(r"(\d+)([smhd]?)")
_UNITS = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400}


def parse_ttl(text: str) -> dt.timedelta:
    """ "90", "90s", "10m", "2h", "7d" as a timedelta (argparse type)."""
    match = _TTL.fullmatch(text.strip())
    if match is None:
        raise argparse.ArgumentTypeError(f"{text!r} is not a duration like 90s, 10m, 2h or 7d")
    return dt.timedelta(seconds=int(match.group(1)) * _UNITS[match.group(2)])


def add_cli(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add `exchange consent issue | show`."""
    consent = subparsers.add_parser("consent", help="consent tokens for conditional types")
    commands = consent.add_subparsers(dest="consent_command", required=True, metavar="COMMAND")

    issue = commands.add_parser("issue", help="sign a consent token and print it")
    issue.add_argument("--key", type=Path, required=True, help="issuer's Ed25519 private key")
    issue.add_argument("--issuer", required=True, help="registered consent issuer id")
    issue.add_argument("--key-id", help="default: derived from the key")
    issue.add_argument(
        "--subject-kind",
        default="RESIDENT_ID",
        choices=["RESIDENT_ID", "UNIFIED_SOCIAL_CREDIT_CODE"],
    )
    issue.add_argument("--subject", required=True, help="the subject's id")
    issue.add_argument("--department", required=True, help="requesting department code")
    issue.add_argument("--type", dest="types", action="append", required=True, help="repeatable")
    issue.add_argument("--purpose", dest="purposes", action="append", required=True)
    issue.add_argument("--ttl", type=parse_ttl, default=dt.timedelta(minutes=10))
    issue.add_argument("--reusable", action="store_true", help="good until it expires")
    issue.set_defaults(run=_run_issue)

    show = commands.add_parser("show", help="print a token's content (signature NOT checked)")
    show.add_argument("token")
    show.set_defaults(run=_run_show)


def _run_issue(args: argparse.Namespace) -> int:
    key = load_signing_key(args.key)
    try:
        subject = validate_subject(
            common_pb2.Subject(
                kind=common_pb2.SubjectKind.Value(args.subject_kind), id=args.subject
            )
        )
    except ExchangeError as error:
        raise ValueError(error.message) from None
    key_id = args.key_id or key_id_for(key.public_key().public_bytes_raw())
    print(
        issue_consent(
            key,
            args.issuer,
            key_id,
            subject,
            args.department,
            args.types,
            args.purposes,
            args.ttl,
            args.reusable,
        )
    )
    return 0


def _run_show(args: argparse.Namespace) -> int:
    try:
        consent = _parse(decode_token(args.token)[0])
    except ExchangeError as error:
        print(f"exchange: error: {error.message}", file=sys.stderr)
        return 1
    values = {
        "consent_id": consent.consent_id,
        "issuer": consent.issuer,
        "key_id": consent.key_id,
        "subject": {"kind": consent.subject.kind, "id": consent.subject.id},
        "requesting_department": consent.requesting_department,
        "certificate_types": list(consent.certificate_types),
        "purposes": list(consent.purposes),
        "issued_at": consent.issued_at.isoformat(),
        "expires_at": consent.expires_at.isoformat(),
        "reusable": consent.reusable,
    }
    print(json.dumps(values, ensure_ascii=False, indent=2))
    return 0
