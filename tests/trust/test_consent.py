"""Consent tokens: issued, verified, and refused with the reason, one reason at a time; single
use enforced by the database (SQLite and PostgreSQL), also across hub processes.
"""

from __future__ import annotations

import asyncio
import base64
import datetime as dt
import json
from collections.abc import Callable, Iterator
from pathlib import Path

import grpc
import pytest
import sqlalchemy as sa
from cryptography.hazmat.primitives.asymmetric import ed25519
from trust.consent_world import LI, NOW, ZHANG, Portal

from exchange.cli import main
from exchange.consent import Consent, decode_token, encode_token, verify_consent
from exchange.consent_uses import ConsentUses, consent_uses
from exchange.db import make_engine, upgrade
from exchange.errors import ExchangeError
from exchange.pki import generate_signing_key, load_signing_key
from exchange.v1 import consent_pb2

BINDING = {
    "subject": ZHANG,
    "department": "MCA",
    "certificate_type": "birth_medical_certificate",
    "purpose": "birth_registration",
}


# Zhang's id with a wrong check character.
WRONG_CHECK = ZHANG.id[:17] + ("1" if ZHANG.id[17] == "0" else "0")


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def verify(portal: Portal, token: str, now: dt.datetime = NOW, **binding: object) -> Consent:
    return verify_consent(token, portal.snapshot(), now, **{**BINDING, **binding})  # type: ignore[arg-type]


def test_a_consent_verifies_and_says_what_was_agreed() -> None:
    portal = Portal()
    token = portal.consent(reusable=True)

    consent = verify(portal, token, NOW + dt.timedelta(minutes=9))

    assert consent.issuer == "gov-portal"
    assert consent.key_id == portal.key_id
    assert consent.subject == ZHANG
    assert consent.requesting_department == "MCA"
    assert consent.certificate_types == ("birth_medical_certificate",)
    assert consent.purposes == ("birth_registration",)
    assert (consent.issued_at, consent.expires_at) == (NOW, NOW + dt.timedelta(minutes=10))
    assert consent.reusable is True
    assert consent.consent_id.startswith("c-") and len(consent.consent_id) == 34
    # The token is the documented format: payload and signature, unpadded base64url.
    payload, signature = decode_token(token)
    assert consent_pb2.Consent.FromString(payload).consent_id == consent.consent_id
    portal.key.public_key().verify(signature, payload)
    assert "=" not in token


def test_each_consent_has_its_own_nonce() -> None:
    portal = Portal()
    ids = {verify(portal, portal.consent()).consent_id for _ in range(20)}
    assert len(ids) == 20


def _reissued(portal: Portal, change: Callable[[consent_pb2.Consent], None]) -> str:
    """Zhang's consent with the payload changed and signed again by the portal."""
    message = consent_pb2.Consent.FromString(decode_token(portal.consent())[0])
    change(message)
    return encode_token(message.SerializeToString(), portal.key)


def _tampered_payload(portal: Portal) -> str:
    """The purpose changed after signing, signature kept."""
    payload, signature = decode_token(portal.consent())
    message = consent_pb2.Consent.FromString(payload)
    message.purposes[0] = "adoption"
    return f"{b64(message.SerializeToString())}.{b64(signature)}"


def _tampered_signature(portal: Portal) -> str:
    payload, signature = decode_token(portal.consent())
    return f"{b64(payload)}.{b64(bytes([signature[0] ^ 1]) + signature[1:])}"


def _signed_by_a_stranger(portal: Portal) -> str:
    """Signed by another key that claims to be the portal's."""
    payload, _ = decode_token(portal.consent())
    return encode_token(payload, ed25519.Ed25519PrivateKey.generate())


Case = tuple[str, Callable[[Portal], str], dict[str, object], str]

REFUSALS: list[Case] = [
    ("not a token", lambda p: "not-a-token", {}, "consent: malformed token (expected two"),
    ("three parts", lambda p: p.consent() + ".x", {}, "consent: malformed token (expected two"),
    ("padding", lambda p: p.consent() + "==", {}, "consent: malformed token (expected two"),
    ("too long", lambda p: "A" * 4097, {}, "consent: malformed token (longer than 4096"),
    (
        "not a Consent",
        lambda p: b64(bytes([0xFF] * 3)) + "." + b64(bytes(64)),
        {},
        "consent: malformed token (the payload is not a Consent message)",
    ),
    (
        "short signature",
        lambda p: decode_and(p, lambda pl, sig: f"{b64(pl)}.{b64(sig[:63])}"),
        {},
        "consent: malformed token (an Ed25519 signature has 64 bytes, got 63)",
    ),
    (
        "no purpose",
        lambda p: _reissued(p, lambda m: m.ClearField("purposes")),
        {},
        "consent: malformed token (names no certificate type or no purpose)",
    ),
    (
        "bad subject id",
        lambda p: _reissued(p, lambda m: setattr(m.subject, "id", WRONG_CHECK)),
        {},
        "consent: malformed token (subject.id: check character",
    ),
    (
        "ends before it starts",
        lambda p: _reissued(p, lambda m: m.expires_at.FromDatetime(NOW - dt.timedelta(hours=1))),
        {},
        "consent: malformed token (expires_at is not after issued_at)",
    ),
    (
        "valid for years",  # signed by the registered key, but not by issue_consent
        lambda p: _reissued(p, lambda m: m.expires_at.FromDatetime(NOW + dt.timedelta(days=367))),
        {},
        "consent: valid for longer than 366 days",
    ),
    (
        "unknown issuer",
        lambda p: _reissued(p, lambda m: setattr(m, "issuer", "fake-portal")),
        {},
        "consent: unknown consent issuer 'fake-portal'",
    ),
    (
        "unknown key",
        lambda p: _reissued(p, lambda m: setattr(m, "key_id", "00000000000000aa")),
        {},
        "consent: issuer 'gov-portal' has no registered key '00000000000000aa'",
    ),
    ("tampered signature", _tampered_signature, {}, "consent: the signature does not verify"),
    ("tampered payload", _tampered_payload, {}, "consent: the signature does not verify"),
    ("signed by a stranger", _signed_by_a_stranger, {}, "consent: the signature does not verify"),
    (
        "expired",
        lambda p: p.consent(),
        {"now": NOW + dt.timedelta(minutes=10)},
        "consent: expired at 2026-03-01T09:40:00+00:00",
    ),
    (
        "not yet valid",
        lambda p: p.consent(),
        {"now": NOW - dt.timedelta(minutes=2)},
        "consent: not valid before 2026-03-01T09:30:00+00:00",
    ),
    (
        "another subject",
        lambda p: p.consent(),
        {"subject": LI},
        "consent: given for another subject",
    ),
    (
        "another department",
        lambda p: p.consent(),
        {"department": "HRSS"},
        "consent: given to department 'MCA', not 'HRSS'",
    ),
    (
        "another type",
        lambda p: p.consent(),
        {"certificate_type": "resident_identity"},
        "consent: does not cover certificate type 'resident_identity'",
    ),
    (
        "another purpose",
        lambda p: p.consent(),
        {"purpose": "adoption"},
        "consent: does not cover purpose 'adoption'",
    ),
]


def decode_and(portal: Portal, build: Callable[[bytes, bytes], str]) -> str:
    return build(*decode_token(portal.consent()))


@pytest.mark.parametrize(
    ("make", "binding", "message"),
    [pytest.param(make, binding, message, id=name) for name, make, binding, message in REFUSALS],
)
def test_a_consent_that_does_not_fit_is_refused_with_the_reason(
    make: Callable[[Portal], str], binding: dict[str, object], message: str
) -> None:
    portal = Portal()
    with pytest.raises(ExchangeError) as refused:
        verify(portal, make(portal), **binding)  # type: ignore[arg-type]
    assert refused.value.status is grpc.StatusCode.PERMISSION_DENIED
    assert refused.value.message.startswith(message), refused.value.message
    assert ZHANG.id not in refused.value.message and LI.id not in refused.value.message


def test_a_retired_consent_key_stops_verifying() -> None:
    portal = Portal()
    token = portal.consent()
    retired = portal.snapshot(not_after=NOW + dt.timedelta(minutes=5))

    verify_consent(token, retired, NOW + dt.timedelta(minutes=4), **BINDING)  # type: ignore[arg-type]
    with pytest.raises(
        ExchangeError, match=r"key .* of issuer 'gov-portal' is outside its validity"
    ):
        verify_consent(token, retired, NOW + dt.timedelta(minutes=5), **BINDING)  # type: ignore[arg-type]


# --- single use --------------------------------------------------------------------------------


@pytest.fixture
def engine(database_url: str) -> Iterator[sa.Engine]:
    engine = make_engine(database_url)
    upgrade(engine)
    yield engine
    engine.dispose()


async def test_a_single_use_consent_is_spent_by_its_first_use(engine: sa.Engine) -> None:
    portal = Portal()
    consent = verify(portal, portal.consent())
    uses = ConsentUses(engine)

    await uses.spend(consent, NOW)
    with pytest.raises(ExchangeError) as replay:
        await uses.spend(consent, NOW + dt.timedelta(seconds=1))

    assert replay.value.status is grpc.StatusCode.PERMISSION_DENIED
    assert replay.value.message == "consent already used"
    with engine.connect() as conn:
        row = conn.execute(sa.select(consent_uses)).one()
    assert (row.issuer, row.consent_id, row.first_used_at) == (
        "gov-portal",
        consent.consent_id,
        NOW,
    )


async def test_a_reusable_consent_is_never_spent(engine: sa.Engine) -> None:
    portal = Portal()
    consent = verify(portal, portal.consent(reusable=True))
    uses = ConsentUses(engine)
    for _ in range(3):
        await uses.spend(consent, NOW)
    with engine.connect() as conn:
        assert conn.execute(sa.select(sa.func.count()).select_from(consent_uses)).scalar() == 0


async def test_one_consent_used_at_once_on_four_hubs_is_granted_once(
    database_url: str, engine: sa.Engine
) -> None:
    portal = Portal()
    consent = verify(portal, portal.consent())
    engines = [make_engine(database_url) for _ in range(4)]

    async def spend(hub: ConsentUses) -> str:
        try:
            await hub.spend(consent, NOW)
        except ExchangeError as error:
            return error.message
        return "granted"

    try:
        outcomes = await asyncio.gather(*(spend(ConsentUses(e)) for e in engines))
    finally:
        for other in engines:
            other.dispose()
    assert sorted(outcomes) == ["consent already used"] * 3 + ["granted"]


async def test_uses_of_long_expired_consents_are_purged_by_a_later_spend(
    engine: sa.Engine,
) -> None:
    portal = Portal()
    three_days_ago = NOW - dt.timedelta(days=3)
    old = verify(portal, portal.consent(now=three_days_ago), three_days_ago)
    recent = verify(portal, portal.consent())
    uses = ConsentUses(engine)
    await uses.spend(old, three_days_ago)

    await uses.spend(recent, NOW)

    with engine.connect() as conn:
        kept = conn.execute(sa.select(consent_uses.c.consent_id)).scalars().all()
    assert kept == [recent.consent_id]
    with pytest.raises(ExchangeError, match="consent already used"):
        await uses.spend(recent, NOW)


# --- exchange consent issue | show --------------------------------------------------------------


def test_cli_issues_a_token_the_hub_accepts(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    keys = generate_signing_key(tmp_path, "portal")
    argv = ["consent", "issue", "--key", str(keys.private), "--issuer", "gov-portal"]
    argv += ["--subject", ZHANG.id.lower(), "--department", "MCA"]
    argv += ["--type", "birth_medical_certificate", "--type", "resident_identity"]
    argv += ["--purpose", "birth_registration", "--ttl", "2h"]
    assert main(argv) == 0
    token = capsys.readouterr().out.strip()

    portal = Portal(key=load_signing_key(keys.private))
    now = dt.datetime.now(dt.UTC)
    consent = verify_consent(token, portal.snapshot(), now + dt.timedelta(minutes=119), **BINDING)  # type: ignore[arg-type]
    assert consent.certificate_types == ("birth_medical_certificate", "resident_identity")
    assert consent.expires_at - consent.issued_at == dt.timedelta(hours=2)
    assert consent.reusable is False

    assert main(["consent", "show", token]) == 0
    shown = json.loads(capsys.readouterr().out)
    assert shown["subject"] == {"kind": "RESIDENT_ID", "id": ZHANG.id}
    assert shown["consent_id"] == consent.consent_id


def test_cli_refuses_an_invalid_subject(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    keys = generate_signing_key(tmp_path, "portal")
    argv = ["consent", "issue", "--key", str(keys.private), "--issuer", "gov-portal"]
    argv += ["--subject", WRONG_CHECK, "--department", "MCA"]
    argv += ["--type", "birth_medical_certificate", "--purpose", "birth_registration"]
    assert main(argv) == 1
    assert "subject.id: check character" in capsys.readouterr().err
