"""The hostile-input suite: a running hub (real mTLS, adapter nodes, audit log) against callers
who try what they should not. Every case asserts the exact status code, and that the attempt
is in the audit log: the entry the refusal's receipt names, found through AuditService as the
auditor, with the same status and reason the caller heard.

Two kinds of attempt never reach the hub and so cannot be in its log: a certificate from
another CA and an expired certificate are refused in the TLS handshake (Python gRPC cannot
accept a connection without verifying its client certificate), and the caller sees
UNAVAILABLE. Those cases assert that nothing was recorded in the stranger's name.

The requesting department comes only from the client certificate (O=): LookupRequest has no
field that names it, so there is nothing to forge. What a caller can put in a request about
who it is (operator_id, matter_id) is recorded as given and changes nothing: the cases below
show the department in the log is the certificate's.
"""

from __future__ import annotations

import asyncio
import base64
import datetime as dt
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import grpc
import grpc.aio
import pytest
import sqlalchemy as sa
from cryptography import x509
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc
from hub_world import ACME, LI, ZHANG, lookup_request, resident
from pki_fixture import TestPki
from trust.consent_world import Portal
from trust.hostile_world import (
    AGENCY,
    INJECTION_PURPOSE,
    LAPSED_AGENCY,
    REVOKED_AGENCY,
    Hostile,
    audited_grant,
    audited_refusal,
    hostile_world,
    refusal,
    sql_node,
)

from exchange.cli import main
from exchange.consent import decode_token
from exchange.pki import issue_identity
from exchange.revocation import revoke_certificates
from exchange.tls import TlsFiles
from exchange.v1 import (
    audit_pb2,
    audit_pb2_grpc,
    common_pb2,
    consent_pb2,
    lookup_pb2,
    registry_pb2,
    registry_pb2_grpc,
)

LOOKUP = "/exchange.v1.LookupService/Lookup"
INVALID = grpc.StatusCode.INVALID_ARGUMENT
DENIED = grpc.StatusCode.PERMISSION_DENIED
UNAUTHENTICATED = grpc.StatusCode.UNAUTHENTICATED
_WEIGHTS = (7, 9, 10, 5, 8, 4, 2, 1, 6, 3, 7, 9, 10, 5, 8, 4, 2)


def with_check(body: str) -> str:
    """A resident ID whose check character is right, whatever else is wrong with it."""
    total = sum(int(c) * w for c, w in zip(body, _WEIGHTS, strict=True))
    return body + "10X98765432"[total % 11]


def wrong_check(subject_id: str) -> str:
    return subject_id[:17] + ("1" if subject_id[17] == "0" else "0")


@pytest.fixture
async def hostile(tmp_path: Path, pki: TestPki) -> AsyncIterator[Hostile]:
    async with hostile_world(tmp_path, pki) as running:
        yield running


# --- requests whose shape is wrong: INVALID_ARGUMENT, naming the field --------------------------

Build = Callable[[Hostile], lookup_pb2.LookupRequest]

SHAPE: list[tuple[str, Build, str]] = [
    ("no subject", lambda h: lookup_request(subject=None), "subject: required"),
    (
        "subject kind unspecified",
        lambda h: lookup_request(subject=common_pb2.Subject(id=ZHANG)),
        "subject.kind: must be RESIDENT_ID or UNIFIED_SOCIAL_CREDIT_CODE",
    ),
    (
        "resident id too short",
        lambda h: lookup_request(subject=resident(ZHANG[:17])),
        "subject.id: resident ID must be 18 characters, got 17",
    ),
    (
        "resident id with a wrong check character",
        lambda h: lookup_request(subject=resident(wrong_check(ZHANG))),
        "subject.id: check character is",
    ),
    (
        "resident id with a letter inside",
        lambda h: lookup_request(subject=resident(ZHANG[:5] + "A" + ZHANG[6:])),
        "subject.id: resident ID character 6 is 'A', must be a digit",
    ),
    (
        "resident id born on 30 February",
        lambda h: lookup_request(subject=resident(with_check("11010119900230123"))),
        "subject.id: birth date (characters 7-14) is not a date",
    ),
    (
        "resident id born in the future",
        lambda h: lookup_request(subject=resident(with_check("11010120990101123"))),
        "subject.id: birth date (characters 7-14) is in the future",
    ),
    (
        "resident id of no region",
        lambda h: lookup_request(subject=resident(with_check("91010119900517123"))),
        "subject.id: region code (characters 1-6) is not valid",
    ),
    (
        "resident id in full-width digits",
        lambda h: lookup_request(
            subject=resident(ZHANG.translate(str.maketrans("0123456789", "０１２３４５６７８９")))
        ),
        "subject.id: resident ID character 1 is '１', must be a digit",
    ),
    (
        "credit code with a wrong check character",
        lambda h: lookup_request(
            certificate_type="business_licence",
            subject=common_pb2.Subject(
                kind=common_pb2.UNIFIED_SOCIAL_CREDIT_CODE, id=wrong_check(ACME)
            ),
            fields=["company_name"],
            purpose="charity_registration",
        ),
        "subject.id: check character is",
    ),
    (
        "credit code with a letter the code never uses",
        lambda h: lookup_request(
            certificate_type="business_licence",
            subject=common_pb2.Subject(
                kind=common_pb2.UNIFIED_SOCIAL_CREDIT_CODE, id=ACME[:10] + "I" + ACME[11:]
            ),
            fields=["company_name"],
            purpose="charity_registration",
        ),
        "subject.id: unified social credit code character 11 is 'I'",
    ),
    (
        "credit code for a resident record",
        lambda h: lookup_request(
            subject=common_pb2.Subject(kind=common_pb2.UNIFIED_SOCIAL_CREDIT_CODE, id=ACME)
        ),
        "subject.kind: 'resident_identity' records are about RESIDENT_ID, not "
        "UNIFIED_SOCIAL_CREDIT_CODE",
    ),
    (
        "SQL in the subject id",
        lambda h: lookup_request(subject=resident("' OR '1'='1' --")),
        "subject.id: resident ID must be 18 characters, got 15",
    ),
    (
        "a field the type does not have",
        lambda h: lookup_request(fields=["name", "eye_colour"]),
        "fields: 'eye_colour' is not a field of 'resident_identity'",
    ),
    (
        "65 field names",
        lambda h: lookup_request(fields=[f"f{i}" for i in range(65)]),
        "fields: at most 64 names",
    ),
    ("no purpose", lambda h: lookup_request(purpose=""), "purpose: required"),
    (
        "purpose of 65 characters",
        lambda h: lookup_request(purpose="p" * 65),
        "purpose: at most 64 characters",
    ),
    (
        "no certificate type",
        lambda h: lookup_request(certificate_type=""),
        "certificate_type: required",
    ),
    (
        "certificate type of 65 characters",
        lambda h: lookup_request(certificate_type="t" * 65),
        "certificate_type: at most 64 characters",
    ),
    (
        "operator id with a NUL",
        lambda h: lookup_request(operator_id="clerk-7\x00admin"),
        "operator_id: contains control characters",
    ),
    (
        "operator id of 65 characters",
        lambda h: lookup_request(operator_id="o" * 65),
        "operator_id: at most 64 characters",
    ),
    (
        "matter id of 100 000 characters",
        lambda h: lookup_request(matter_id="m" * 100_000),
        "request is ",  # refused by size before it is parsed
    ),
    (
        "matter id of 65 characters",
        lambda h: lookup_request(matter_id="m" * 65),
        "matter_id: at most 64 characters",
    ),
    (
        "request id with spaces",
        lambda h: lookup_request(request_id="case 17; DROP TABLE audit_entries"),
        "request_id: only printable ASCII characters, no spaces",
    ),
    (
        "request id of 65 characters",
        lambda h: lookup_request(request_id="r" * 65),
        "request_id: at most 64 characters",
    ),
    (
        "consent token of 4097 characters",
        lambda h: h.birth_request(consent_token="A" * 4097),
        "consent_token: at most 4096 characters",
    ),
    (
        "delegation id of 65 characters",
        lambda h: lookup_request(delegation_id="d" * 65),
        "delegation_id: at most 64 characters",
    ),
]


@pytest.mark.parametrize(
    ("build", "reason"), [pytest.param(build, reason, id=name) for name, build, reason in SHAPE]
)
async def test_a_malformed_request_is_invalid_and_audited(
    hostile: Hostile, build: Build, reason: str
) -> None:
    world = hostile.world
    error, entry = await audited_refusal(
        world,
        world.lookup().Lookup(build(hostile)),
        INVALID,
        event="call_refused" if reason == "request is " else "lookup",
    )
    assert error.details().startswith(reason), error.details()
    assert entry.requester_department == "MCA"


# --- policy: PERMISSION_DENIED or NOT_FOUND with the reason -------------------------------------

POLICY: list[tuple[str, Build, grpc.StatusCode, str]] = [
    (
        "unknown certificate type",
        lambda h: lookup_request(certificate_type="marriage_certificate"),
        grpc.StatusCode.NOT_FOUND,
        "certificate type 'marriage_certificate' is not registered",
    ),
    (
        "purpose outside the grant",
        lambda h: lookup_request(purpose="adoption"),
        DENIED,
        "purpose 'adoption' is not granted to department 'MCA' on 'resident_identity'",
    ),
    (
        "a not-shared type",
        lambda h: lookup_request(
            certificate_type="criminal_record", fields=["convictions"], purpose="adoption"
        ),
        DENIED,
        "'criminal_record' is not shared through the exchange",
    ),
    (
        "only fields beyond the grant",
        lambda h: lookup_request(fields=["ethnicity"]),
        DENIED,
        "none of the requested fields is granted to department 'MCA' on 'resident_identity'",
    ),
    (
        "conditional type without consent",
        lambda h: h.birth_request(consent_token=""),
        DENIED,
        "consent required: 'birth_medical_certificate' is shared only with consent",
    ),
    (
        "consent for another subject",
        lambda h: h.birth_request(consent_token=h.consent(subject=LI)),
        DENIED,
        "consent: given for another subject",
    ),
    (
        "consent for another department",
        lambda h: h.birth_request(consent_token=h.consent(requesting_department="HRSS")),
        DENIED,
        "consent: given to department 'HRSS', not 'MCA'",
    ),
    (
        "consent for another type",
        lambda h: h.birth_request(consent_token=h.consent(certificate_types=["resident_identity"])),
        DENIED,
        "consent: does not cover certificate type 'birth_medical_certificate'",
    ),
    (
        "consent for another purpose",
        lambda h: h.birth_request(consent_token=h.consent(purposes=["adoption"])),
        DENIED,
        "consent: does not cover purpose 'birth_registration'",
    ),
    (
        "expired consent",
        lambda h: h.birth_request(
            consent_token=h.consent(now=dt.datetime.now(dt.UTC) - dt.timedelta(minutes=11))
        ),
        DENIED,
        "consent: expired at",
    ),
    (
        "consent with a tampered signature",
        lambda h: h.birth_request(consent_token=_flip_signature(h.consent())),
        DENIED,
        "consent: the signature does not verify",
    ),
    (
        "consent with a purpose added after signing",
        lambda h: h.birth_request(consent_token=_widened(h.consent())),
        DENIED,
        "consent: the signature does not verify",
    ),
    (
        "consent from an unregistered issuer",
        lambda h: h.birth_request(consent_token=_from(Portal(id="fake-portal"), h)),
        DENIED,
        "consent: unknown consent issuer 'fake-portal'",
    ),
    (
        "consent signed by a key the portal never registered",
        lambda h: h.birth_request(consent_token=_from(Portal(id="gov-portal"), h)),
        DENIED,
        "consent: issuer 'gov-portal' has no registered key",
    ),
    (
        "consent that is not a token",
        lambda h: h.birth_request(consent_token="please-let-me-in"),
        DENIED,
        "consent: malformed token",
    ),
    (
        "unknown delegation",
        lambda h: lookup_request(delegation_id="d-nope"),
        DENIED,
        "delegation 'd-nope' is not registered",
    ),
    (
        "revoked delegation",
        lambda h: lookup_request(delegation_id=REVOKED_AGENCY),
        DENIED,
        f"delegation {REVOKED_AGENCY!r} is revoked",
    ),
    (
        "lapsed delegation",
        lambda h: lookup_request(delegation_id=LAPSED_AGENCY),
        DENIED,
        f"delegation {LAPSED_AGENCY!r} is not in force",
    ),
    (
        "delegation for another principal",
        lambda h: lookup_request(subject=resident(LI), delegation_id=AGENCY),
        DENIED,
        f"delegation {AGENCY!r} is for another principal",
    ),
    (
        "delegation that does not cover the purpose",
        lambda h: lookup_request(purpose="marriage_registration", delegation_id=AGENCY),
        DENIED,
        f"delegation {AGENCY!r} does not cover 'resident_identity' for 'marriage_registration'",
    ),
]


def _flip_signature(token: str) -> str:
    payload, signature = decode_token(token)
    tampered = bytes([signature[-1] ^ 0x01])
    return encode_token_raw(payload, signature[:-1] + tampered)


def _widened(token: str) -> str:
    payload, signature = decode_token(token)
    consent = consent_pb2.Consent.FromString(payload)
    consent.purposes.append("adoption")
    return encode_token_raw(consent.SerializeToString(), signature)


def _from(portal: Portal, hostile: Hostile) -> str:
    return Hostile(hostile.world, portal, hostile.directory, hostile.pki).consent()


def encode_token_raw(payload: bytes, signature: bytes) -> str:
    """A token of these exact bytes (no signing: the signature is whatever is given)."""

    def b64(data: bytes) -> str:
        return base64.urlsafe_b64encode(data).rstrip(b"=").decode()

    return f"{b64(payload)}.{b64(signature)}"


@pytest.mark.parametrize(
    ("build", "code", "reason"),
    [pytest.param(build, code, reason, id=name) for name, build, code, reason in POLICY],
)
async def test_a_lookup_policy_refuses_is_refused_with_the_reason_and_audited(
    hostile: Hostile, build: Build, code: grpc.StatusCode, reason: str
) -> None:
    world = hostile.world
    error, entry = await audited_refusal(world, world.lookup().Lookup(build(hostile)), code)
    assert error.details().startswith(reason), error.details()
    assert entry.requester_department == "MCA"


async def test_a_department_without_a_grant_is_refused_and_audited(hostile: Hostile) -> None:
    world = hostile.world
    error, entry = await audited_refusal(
        world, world.lookup(world.hrss).Lookup(lookup_request()), DENIED
    )
    assert error.details() == "no grant for department 'HRSS' on 'resident_identity'"
    assert (entry.requester_department, entry.caller) == ("HRSS", "hrss-counter")


async def test_a_replayed_consent_is_refused_and_audited(hostile: Hostile) -> None:
    world = hostile.world
    request = hostile.birth_request()
    document, granted = await audited_grant(world, world.lookup().Lookup(request))
    assert dict(document.fields) == {"child_name": "张小伟", "birth_date": "2024-08-15"}
    consent_id = _consent_id(request.consent_token)
    assert granted.consent_ref == consent_id

    error, entry = await audited_refusal(world, world.lookup().Lookup(request), DENIED)
    assert error.details() == "consent already used"
    assert entry.consent_ref == consent_id  # the replay is on record against the same consent


async def test_a_reusable_consent_serves_more_than_one_lookup(hostile: Hostile) -> None:
    world = hostile.world
    request = hostile.birth_request(consent_token=hostile.consent(reusable=True))
    for _ in range(2):
        _, entry = await audited_grant(world, world.lookup().Lookup(request))
        assert entry.consent_ref == _consent_id(request.consent_token)


def _consent_id(token: str) -> str:
    return consent_pb2.Consent.FromString(decode_token(token)[0]).consent_id


async def test_an_agent_under_a_delegation_is_served_and_the_delegation_recorded(
    hostile: Hostile,
) -> None:
    world = hostile.world
    request = lookup_request(delegation_id=AGENCY, operator_id="clerk-7")
    document, entry = await audited_grant(world, world.lookup().Lookup(request))
    assert document.fields["name"] == "张伟"
    assert entry.delegation_id == AGENCY


# --- fields beyond the grant, and request fields that claim to be someone ----------------------


async def test_fields_beyond_the_grant_are_withheld_not_refused(hostile: Hostile) -> None:
    world = hostile.world
    request = lookup_request(fields=["name", "ethnicity", "address"])
    document, entry = await audited_grant(world, world.lookup().Lookup(request))
    assert set(document.fields) == {"name", "address"}
    assert sorted(entry.fields_released) == ["address", "name"]


async def test_an_operator_id_naming_another_department_changes_nothing(hostile: Hostile) -> None:
    world = hostile.world
    request = lookup_request(operator_id="PSB/admin", matter_id="PSB-2024-0001")
    _, entry = await audited_grant(world, world.lookup().Lookup(request))
    # The department is the certificate's; the claims are kept verbatim as evidence.
    assert (entry.requester_department, entry.caller) == ("MCA", "mca-case-system")
    assert (entry.operator_id, entry.matter_id) == ("PSB/admin", "PSB-2024-0001")
    assert entry.grant_id == "mca-residents"


async def test_another_departments_operator_cannot_borrow_its_grant(hostile: Hostile) -> None:
    world = hostile.world
    # HRSS names MCA's clerk and matter: still HRSS's lookup, with HRSS's (absent) grants.
    request = lookup_request(operator_id="clerk-7", matter_id="MCA-2024-0001")
    error, entry = await audited_refusal(world, world.lookup(world.hrss).Lookup(request), DENIED)
    assert error.details() == "no grant for department 'HRSS' on 'resident_identity'"
    assert entry.requester_department == "HRSS"


async def test_sql_shaped_strings_reach_the_sql_backend_and_do_no_harm(hostile: Hostile) -> None:
    world = hostile.world
    node, url = await sql_node(hostile)
    await world.set_endpoints("psb-population", [node.endpoint])
    engine = sa.create_engine(url)
    with engine.connect() as conn:
        before = conn.execute(sa.text("SELECT * FROM residents ORDER BY id")).all()

    # Both strings travel to the adapter node in the FetchRequest: the purpose is one MCA
    # really holds a grant for, the request id is bound into the signed document.
    request = lookup_request(
        fields=["name"],
        purpose=INJECTION_PURPOSE,
        request_id="1';DROP/**/TABLE/**/residents;--",
        matter_id="'); DELETE FROM audit_entries; --",
    )
    document, entry = await audited_grant(world, world.lookup().Lookup(request))

    assert dict(document.fields) == {"name": "张伟"}
    assert document.request_id == "1';DROP/**/TABLE/**/residents;--"
    assert (entry.purpose, entry.matter_id) == (
        INJECTION_PURPOSE,
        "'); DELETE FROM audit_entries; --",
    )
    with engine.connect() as conn:
        assert conn.execute(sa.text("SELECT * FROM residents ORDER BY id")).all() == before
    engine.dispose()
    # And the log kept every entry before this one.
    entries = await world.audit_entries()
    assert [e.index for e in entries] == list(range(len(entries)))


# --- the gate: identity, revocation and role, audited as refused calls -------------------------


@pytest.mark.parametrize(
    ("role", "department"),
    [("adapter", "PSB"), ("hub", "EXCHANGE"), ("admin", "EXCHANGE"), ("auditor", "EXCHANGE")],
)
async def test_a_role_other_than_department_may_not_look_up(
    hostile: Hostile, role: str, department: str
) -> None:
    world = hostile.world
    caller = world.pki.identity(f"intruding-{role}", role, department)
    error, entry = await audited_refusal(
        world, world.lookup(caller).Lookup(lookup_request()), DENIED, event="call_refused"
    )
    assert error.details() == f"role {role!r} may not call {LOOKUP}"
    assert (entry.caller, entry.role) == (f"intruding-{role}", role)


async def test_a_department_may_not_change_the_registry(hostile: Hostile) -> None:
    world = hostile.world
    stub = registry_pb2_grpc.RegistryServiceStub(world.channel(world.mca))
    grant = registry_pb2.Grant(
        requesting_department="MCA",
        certificate_type="criminal_record",
        fields=["convictions"],
        purposes=["curiosity"],
    )
    error, entry = await audited_refusal(
        world, stub.RegisterGrant(grant), DENIED, event="call_refused"
    )
    assert error.details() == "role 'department' may not call " + entry.method
    assert entry.method == "/exchange.v1.RegistryService/RegisterGrant"
    grants = await world.registry().ListGrants(registry_pb2.ListGrantsRequest())
    assert "curiosity" not in {p for g in grants.grants for p in g.purposes}


async def test_a_department_may_not_read_the_audit_log(hostile: Hostile) -> None:
    world = hostile.world
    stub = audit_pb2_grpc.AuditServiceStub(world.channel(world.mca))
    error, entry = await audited_refusal(
        world,
        stub.QueryAccessLog(audit_pb2.QueryAccessLogRequest(requester_department="HRSS")),
        DENIED,
        event="call_refused",
    )
    assert entry.method == "/exchange.v1.AuditService/QueryAccessLog"
    assert error.details() == "role 'department' may not call " + entry.method


async def test_an_auditor_may_not_change_the_registry(hostile: Hostile) -> None:
    world = hostile.world
    stub = registry_pb2_grpc.RegistryServiceStub(world.channel(world.auditor))
    await audited_refusal(
        world,
        stub.UpdateDelegation(registry_pb2.Delegation(id=AGENCY, revoked=True)),
        DENIED,
        event="call_refused",
    )


async def test_a_department_the_registry_does_not_know_is_unauthenticated(
    hostile: Hostile,
) -> None:
    world = hostile.world
    ghost = world.pki.identity("ghost-office", "department", "GHOST")
    error, entry = await audited_refusal(
        world, world.lookup(ghost).Lookup(lookup_request()), UNAUTHENTICATED, event="call_refused"
    )
    assert error.details() == "department 'GHOST' is not registered"
    assert entry.requester_department == "GHOST"


async def test_a_certificate_with_an_unknown_role_is_unauthenticated(hostile: Hostile) -> None:
    world = hostile.world
    stranger = world.pki.identity("cleaner", "janitor", "MCA")
    error, _ = await audited_refusal(
        world,
        world.lookup(stranger).Lookup(lookup_request()),
        UNAUTHENTICATED,
        event="call_refused",
    )
    assert error.details() == "client certificate has unknown role 'janitor'"


def _fresh(hostile: Hostile, name: str, role: str, department: str) -> tuple[TlsFiles, int]:
    """An identity of its own from the session CA, so revoking it touches no other test."""
    files = issue_identity(hostile.pki.ca.parent, hostile.directory / "ids", name, role, department)
    serial = x509.load_pem_x509_certificate(files.cert.read_bytes()).serial_number
    return files, serial


async def test_a_revoked_department_certificate_is_unauthenticated(hostile: Hostile) -> None:
    world = hostile.world
    files, serial = _fresh(hostile, "mca-revoked-early", "department", "MCA")
    revoke_certificates(hostile.pki.ca.parent, serial=serial, reason="key_compromise")

    error, entry = await audited_refusal(
        world, world.lookup(files).Lookup(lookup_request()), UNAUTHENTICATED, event="call_refused"
    )
    assert error.details() == f"certificate {serial:x} is revoked"
    assert entry.caller == "mca-revoked-early"


async def test_a_certificate_revoked_while_connected_stops_the_next_call(
    hostile: Hostile,
) -> None:
    world = hostile.world
    files, serial = _fresh(hostile, "mca-revoked-live", "department", "MCA")
    stub = world.lookup(files)  # one channel, one TLS connection, for both calls
    await audited_grant(world, stub.Lookup(lookup_request()))

    revoke_certificates(hostile.pki.ca.parent, serial=serial)

    error, _ = await audited_refusal(
        world, stub.Lookup(lookup_request()), UNAUTHENTICATED, event="call_refused"
    )
    assert error.details() == f"certificate {serial:x} is revoked"


async def test_a_revoked_administrator_may_no_longer_change_the_registry(
    hostile: Hostile,
) -> None:
    world = hostile.world
    files, serial = _fresh(hostile, "admin-revoked", "admin", "EXCHANGE")
    revoke_certificates(hostile.pki.ca.parent, serial=serial)
    stub = registry_pb2_grpc.RegistryServiceStub(world.channel(files))
    error, _ = await audited_refusal(
        world,
        stub.UpdateDelegation(registry_pb2.Delegation(id=AGENCY, revoked=True)),
        UNAUTHENTICATED,
        event="call_refused",
    )
    assert error.details() == f"certificate {serial:x} is revoked"
    delegations = await world.registry().ListDelegations(registry_pb2.ListDelegationsRequest())
    assert [d.revoked for d in delegations.delegations if d.id == AGENCY] == [False]


async def test_a_message_that_does_not_parse_is_invalid_and_audited(hostile: Hostile) -> None:
    world = hostile.world
    call = world.channel(world.mca).unary_unary(LOOKUP)
    error, entry = await audited_refusal(
        world, call(b"\x0a\xff\xff\xff\xff\x0f"), INVALID, event="call_refused"
    )
    assert error.details() == f"request is not a valid message for {LOOKUP}"
    assert entry.caller == "mca-case-system"


async def test_a_message_beyond_the_lookup_size_limit_is_invalid_and_audited(
    hostile: Hostile,
) -> None:
    world = hostile.world
    call = world.channel(world.mca).unary_unary(LOOKUP)
    oversized = lookup_request(matter_id="x" * 40_000).SerializeToString()
    error, _ = await audited_refusal(world, call(oversized), INVALID, event="call_refused")
    assert error.details().startswith(f"request is {len(oversized)} bytes")


async def test_a_department_over_its_quota_is_told_when_to_retry(hostile: Hostile) -> None:
    world = hostile.world
    counter = world.pki.identity("qta-counter", "department", "QTA")
    request = lookup_request(fields=["name"])
    await audited_grant(world, world.lookup(counter).Lookup(request))

    error, entry = await audited_refusal(
        world, world.lookup(counter).Lookup(request), grpc.StatusCode.RESOURCE_EXHAUSTED
    )
    assert error.details() == "quota: 1 lookups/s for department 'QTA' exceeded"
    assert 0 < int(dict(error.trailing_metadata() or ())["retry-after-ms"]) <= 1000
    assert entry.requester_department == "QTA"


# --- refused in the handshake: nothing reaches the hub, nothing in anyone's name ----------------


@pytest.mark.parametrize("kind", ["another CA", "expired"])
async def test_a_certificate_our_ca_does_not_vouch_for_never_reaches_the_hub(
    hostile: Hostile, kind: str
) -> None:
    world = hostile.world
    issue = world.pki.foreign_identity if kind == "another CA" else world.pki.expired_identity
    stranger = issue("mca-case-system", "department", "MCA")
    error = await refusal(world.lookup(stranger).Lookup(lookup_request(), timeout=10))
    assert error.code() == grpc.StatusCode.UNAVAILABLE
    assert await world.audit_entries(event="lookup") == []
    assert await world.audit_entries(event="call_refused") == []


# --- the lifecycle as an operator meets it --------------------------------------------------------


async def test_exchange_pki_revoke_stops_a_departments_next_lookup_while_the_hub_serves(
    hostile: Hostile,
) -> None:
    world = hostile.world
    files, serial = _fresh(hostile, "mca-counter-3", "department", "MCA")
    stub = world.lookup(files)
    await audited_grant(world, stub.Lookup(lookup_request()))

    ca_dir = str(hostile.pki.ca.parent)
    assert main(["pki", "revoke", "--dir", ca_dir, "--name", "mca-counter-3"]) == 0

    error, entry = await audited_refusal(
        world, stub.Lookup(lookup_request()), UNAUTHENTICATED, event="call_refused"
    )
    assert error.details() == f"certificate {serial:x} is revoked"
    assert entry.caller == "mca-counter-3"
    # The hub kept running: MCA's other system is served as before.
    await audited_grant(world, world.lookup().Lookup(lookup_request()))


async def test_a_revocation_ends_an_open_stream_at_its_next_message(hostile: Hostile) -> None:
    world = hostile.world
    files, serial = _fresh(hostile, "probe-streaming", "auditor", "EXCHANGE")
    asking: asyncio.Queue[reflection_pb2.ServerReflectionRequest] = asyncio.Queue()

    async def questions() -> AsyncIterator[reflection_pb2.ServerReflectionRequest]:
        while True:
            yield await asking.get()

    stub = reflection_pb2_grpc.ServerReflectionStub(world.channel(files))
    call = stub.ServerReflectionInfo(questions())
    question = reflection_pb2.ServerReflectionRequest(list_services="")
    await asking.put(question)
    assert (await call.read()).list_services_response.service

    revoke_certificates(hostile.pki.ca.parent, serial=serial)
    await asking.put(question)
    with pytest.raises(grpc.aio.AioRpcError) as ended:
        await call.read()
    assert ended.value.code() == grpc.StatusCode.UNAUTHENTICATED
    assert ended.value.details() == f"certificate {serial:x} is revoked"
    refused = await world.audit_entries(event="call_refused", requester_department="EXCHANGE")
    (entry,) = [e for e in refused if e.caller == "probe-streaming"]
    assert entry.method == "/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo"


async def test_a_revoked_certificate_may_not_even_ask_for_health(hostile: Hostile) -> None:
    world = hostile.world
    files, serial = _fresh(hostile, "probe-revoked", "auditor", "EXCHANGE")
    revoke_certificates(hostile.pki.ca.parent, serial=serial)
    health = health_pb2_grpc.HealthStub(world.channel(files))
    error, entry = await audited_refusal(
        world, health.Check(health_pb2.HealthCheckRequest()), UNAUTHENTICATED, event="call_refused"
    )
    assert error.details() == f"certificate {serial:x} is revoked"
    assert entry.method == "/grpc.health.v1.Health/Check"


async def test_a_connection_does_not_outlive_its_certificate(hostile: Hostile) -> None:
    world = hostile.world
    # Valid for one day, of which all but a few seconds have passed.
    start = dt.datetime.now(dt.UTC) - dt.timedelta(days=1) + dt.timedelta(seconds=3)
    files = issue_identity(
        hostile.pki.ca.parent,
        hostile.directory / "ids",
        "mca-expiring",
        "department",
        "MCA",
        days=1,
        not_before=start,
    )
    not_after = x509.load_pem_x509_certificate(files.cert.read_bytes()).not_valid_after_utc
    stub = world.lookup(files)
    await audited_grant(world, stub.Lookup(lookup_request()))

    # Wait for the certificate to end; the connection made while it was valid stays open.
    await asyncio.sleep(max(0.0, (not_after - dt.datetime.now(dt.UTC)).total_seconds()) + 0.2)

    error, _ = await audited_refusal(
        world, stub.Lookup(lookup_request()), UNAUTHENTICATED, event="call_refused"
    )
    assert error.details().endswith(f"expired at {not_after.isoformat()}")
