"""One lookup end to end: what a department gets, what it is refused, and what the log says.

Documents and receipts are checked the way a department's own system would: with nothing but
`cryptography`, RFC 6962 (tests/rfc6962.py), the issuer's key as RegistryService lists it and
the log's public key.
"""

from __future__ import annotations

import asyncio
import hashlib
from pathlib import Path

import grpc
import grpc.aio
import pytest
import rfc6962
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from hub_world import (
    ACME,
    BIRTH_REGISTRATION,
    GRANTED_RESIDENT_FIELDS,
    LI,
    NOBODY,
    ZHANG,
    HubWorld,
    lookup_request,
    resident,
    running_world,
)
from pki_fixture import TestPki

from audit.database_check import verify_database
from exchange.v1 import audit_pb2, common_pb2, lookup_pb2, registry_pb2


async def refused(world: HubWorld, request: lookup_pb2.LookupRequest) -> grpc.aio.AioRpcError:
    """The error MCA's lookup ends with; it must carry its audit receipt."""
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await world.lookup().Lookup(request)
    error = caught.value
    metadata = dict(error.trailing_metadata() or ())
    receipt = lookup_pb2.Receipt.FromString(metadata["exchange-receipt-bin"])
    entry = await world.last_entry(event="lookup")
    assert entry.index == receipt.entry_index
    assert entry.status == error.code().name
    # The id to quote when asking about this call (the hub's own when the caller sent none).
    assert metadata["exchange-request-id"] == entry.request_id != ""
    return error


async def issuer_key(world: HubWorld, department: str) -> Ed25519PublicKey:
    """The department's signing key as the registry publishes it."""
    listing = await world.registry().ListDepartments(registry_pb2.ListDepartmentsRequest())
    (found,) = [d for d in listing.departments if d.code == department]
    return Ed25519PublicKey.from_public_bytes(found.signing_keys[0].public_key)


def log_key(world: HubWorld) -> Ed25519PublicKey:
    key = serialization.load_pem_public_key(world.config.audit.public_key.read_bytes())
    assert isinstance(key, Ed25519PublicKey)
    return key


async def test_a_granted_lookup_releases_granted_fields_signed_by_the_issuer(
    world: HubWorld,
) -> None:
    # "ethnicity" is in the record but not in MCA's grant: withheld, not an error.
    request = lookup_request(fields=["name", "address", "ethnicity"], request_id="case-17")
    response = await world.lookup().Lookup(request)

    signed = response.document
    (await issuer_key(world, "PSB")).verify(signed.signature, signed.payload)  # raises if forged
    document = common_pb2.Document.FromString(signed.payload)
    assert dict(document.fields) == {"name": "张伟", "address": "北京市东城区景山前街4号"}
    assert document.issuer == "PSB"
    assert document.subject == resident(ZHANG)
    assert document.request_id == "case-17"

    receipt = response.receipt
    log_key(world).verify(receipt.signature, receipt.promise)
    promise = lookup_pb2.InclusionPromise.FromString(receipt.promise)
    position = receipt.entry_index - promise.batch_start
    assert 0 <= position < promise.batch_size
    path = list(receipt.batch_path)
    assert rfc6962.inclusion_root(position, promise.batch_size, receipt.leaf_hash, path) == (
        promise.batch_root
    )

    entry = await world.last_entry(event="lookup")
    assert entry.index == receipt.entry_index
    assert rfc6962.leaf(entry.leaf_data) == receipt.leaf_hash
    assert entry.outcome == audit_pb2.GRANTED
    assert entry.status == "OK"
    assert sorted(entry.fields_released) == ["address", "name"]
    assert entry.grant_id == "mca-residents"
    assert entry.document_digest == hashlib.sha256(signed.payload).hexdigest()
    assert (entry.requester_department, entry.caller) == ("MCA", "mca-case-system")
    assert (entry.purpose, entry.matter_id, entry.operator_id) == (
        BIRTH_REGISTRATION,
        "MCA-2024-0001",
        "clerk-7",
    )
    assert entry.subject == resident(ZHANG)
    assert entry.request_id == "case-17"


async def test_no_fields_requested_means_every_granted_field(world: HubWorld) -> None:
    response = await world.lookup().Lookup(lookup_request(fields=[], subject=resident(LI)))
    document = common_pb2.Document.FromString(response.document.payload)
    assert set(document.fields) == set(GRANTED_RESIDENT_FIELDS)
    assert document.request_id, "the hub assigned a request id"
    assert not document.HasField("valid_until")


async def test_an_organisation_subject_is_looked_up_at_its_own_issuer(world: HubWorld) -> None:
    request = lookup_request(
        certificate_type="business_licence",
        subject=common_pb2.Subject(kind=common_pb2.UNIFIED_SOCIAL_CREDIT_CODE, id=ACME),
        fields=[],
        purpose="charity_registration",
    )
    response = await world.lookup().Lookup(request)
    (await issuer_key(world, "AMR")).verify(response.document.signature, response.document.payload)
    document = common_pb2.Document.FromString(response.document.payload)
    assert dict(document.fields) == {
        "company_name": "北京示例科技有限公司",
        "legal_representative": "王强",
    }


@pytest.mark.parametrize(
    ("subject", "message"),
    [
        (common_pb2.Subject(id=ZHANG), "subject.kind: must be RESIDENT_ID or"),
        (resident(ZHANG[:17]), "subject.id: resident ID must be 18 characters, got 17"),
        (resident(ZHANG[:6] + "A" + ZHANG[7:]), "subject.id: resident ID character 7 is 'A'"),
        (resident(ZHANG[:17] + ("0" if ZHANG[17] != "0" else "1")), "subject.id: check character"),
        (resident("110101" + "20991231" + "1234"), "subject.id: birth date (characters 7-14)"),
    ],
)
async def test_a_malformed_subject_is_refused_naming_the_problem(
    world: HubWorld, subject: common_pb2.Subject, message: str
) -> None:
    error = await refused(world, lookup_request(subject=subject))
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert error.details().startswith(message)
    entry = await world.last_entry(event="lookup")
    assert entry.outcome == audit_pb2.REFUSED
    assert entry.reason == error.details()


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"certificate_type": ""}, "certificate_type: required"),
        ({"purpose": ""}, "purpose: required"),
        (
            {"fields": ["name", "shoe_size"]},
            "fields: 'shoe_size' is not a field of 'resident_identity'",
        ),
        (
            {"subject": common_pb2.Subject(kind=common_pb2.UNIFIED_SOCIAL_CREDIT_CODE, id=ACME)},
            "subject.kind: 'resident_identity' records are about RESIDENT_ID",
        ),
        ({"request_id": "x" * 65}, "request_id: at most 64 characters"),
    ],
)
async def test_a_malformed_request_is_refused_naming_the_field(
    world: HubWorld, overrides: dict[str, object], message: str
) -> None:
    error = await refused(world, lookup_request(**overrides))
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert error.details().startswith(message)


@pytest.mark.parametrize(
    "backend", ["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)]
)
async def test_a_nul_in_a_request_is_refused_and_recorded_without_failing_others(
    tmp_path: Path, pki: TestPki, backend: str, request: pytest.FixtureRequest
) -> None:
    # PostgreSQL's text cannot hold NUL: the refusals' entries must still be stored, and
    # the honest lookups committed in the same batches with them must not fail.
    database = request.getfixturevalue("postgres_url") if backend == "postgresql" else None
    async with running_world(tmp_path, pki, database) as world:
        stub = world.lookup()
        honest = [stub.Lookup(lookup_request()) for _ in range(20)]
        bad = [
            stub.Lookup(lookup_request(certificate_type="x\x00", purpose="birth\x00registration"))
            for _ in range(20)
        ]
        results = await asyncio.gather(*honest, *bad, return_exceptions=True)

        assert all(isinstance(r, lookup_pb2.LookupResponse) for r in results[:20])
        for error in results[20:]:
            assert isinstance(error, grpc.aio.AioRpcError)
            assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
            assert error.details() == "certificate_type: contains control characters"
        entries = await world.audit_entries(event="lookup", requester_department="MCA")
        assert sorted(e.status for e in entries) == ["INVALID_ARGUMENT"] * 20 + ["OK"] * 20
        refused = [e for e in entries if e.status == "INVALID_ARGUMENT"]
        assert {(e.certificate_type, e.purpose) for e in refused} == {
            ("x\x00", "birth\x00registration")
        }
        assert world.hub.engine is not None and world.hub.audit is not None
        checked = verify_database(world.hub.engine, world.hub.audit.public_key_raw)
        assert checked.entries >= 40


@pytest.mark.parametrize(
    ("overrides", "status", "message"),
    [
        (
            {"certificate_type": "dog_licence"},
            grpc.StatusCode.NOT_FOUND,
            "certificate type 'dog_licence' is not registered",
        ),
        (
            {"subject": resident(NOBODY)},
            grpc.StatusCode.NOT_FOUND,
            "no resident_identity record for this subject",
        ),
        (
            {"purpose": "marketing"},
            grpc.StatusCode.PERMISSION_DENIED,
            "purpose 'marketing' is not granted to department 'MCA' on 'resident_identity'",
        ),
        (
            {"certificate_type": "criminal_record", "fields": [], "purpose": "adoption"},
            grpc.StatusCode.PERMISSION_DENIED,
            "'criminal_record' is not shared through the exchange",
        ),
        (
            {"certificate_type": "birth_medical_certificate", "fields": []},
            grpc.StatusCode.PERMISSION_DENIED,
            "consent required",
        ),
        (
            {
                "certificate_type": "birth_medical_certificate",
                "fields": [],
                "consent_token": "signed-by-mum",
            },
            grpc.StatusCode.PERMISSION_DENIED,
            "consent: malformed token",
        ),
        (
            {"fields": ["ethnicity"]},
            grpc.StatusCode.PERMISSION_DENIED,
            "none of the requested fields is granted",
        ),
    ],
    ids=[
        "unknown-type",
        "unknown-subject",
        "wrong-purpose",
        "not-shared",
        "conditional-without-consent",
        "conditional-with-token",
        "no-granted-field-asked",
    ],
)
async def test_each_refusal_has_its_status_and_is_recorded(
    world: HubWorld, overrides: dict[str, object], status: grpc.StatusCode, message: str
) -> None:
    error = await refused(world, lookup_request(**overrides))
    assert error.code() == status
    assert error.details().startswith(message)
    entry = await world.last_entry(event="lookup")
    assert entry.outcome == audit_pb2.REFUSED
    assert entry.reason == error.details()
    assert entry.fields_released == []
    assert entry.document_digest == ""


async def test_a_department_without_a_grant_is_refused(world: HubWorld) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await world.lookup(world.hrss).Lookup(lookup_request())
    assert caught.value.code() == grpc.StatusCode.PERMISSION_DENIED
    assert caught.value.details() == "no grant for department 'HRSS' on 'resident_identity'"
    entry = await world.last_entry(event="lookup", requester_department="HRSS")
    assert entry.outcome == audit_pb2.REFUSED
    assert entry.subject == resident(ZHANG)


async def test_a_grant_no_longer_in_force_is_no_grant(world: HubWorld) -> None:
    registry = world.registry()
    grants = await registry.ListGrants(registry_pb2.ListGrantsRequest(requesting_department="MCA"))
    (grant,) = [g for g in grants.grants if g.id == "mca-residents"]
    grant.valid_until.FromSeconds(1_600_000_000)  # September 2020
    grant.valid_from.FromSeconds(1_500_000_000)
    await registry.UpdateGrant(grant)

    error = await refused(world, lookup_request())
    assert error.code() == grpc.StatusCode.PERMISSION_DENIED
    assert error.details() == "no grant for department 'MCA' on 'resident_identity'"


async def test_a_disabled_data_source_is_unavailable(world: HubWorld) -> None:
    nodes = world.nodes
    await world.set_endpoints(
        "psb-population", [nodes["psb-a"].endpoint, nodes["psb-b"].endpoint], enabled=False
    )
    error = await refused(world, lookup_request())
    assert error.code() == grpc.StatusCode.UNAVAILABLE
    entry = await world.last_entry(event="lookup")
    assert entry.outcome == audit_pb2.FAILED


async def test_a_lookup_fails_over_to_the_next_replica(world: HubWorld) -> None:
    await world.nodes["psb-a"].server.stop(None)

    response = await world.lookup().Lookup(lookup_request())

    document = common_pb2.Document.FromString(response.document.payload)
    assert document.fields["name"] == "张伟"


async def test_a_replica_that_stops_after_answering_is_failed_over_on_the_next_lookup(
    world: HubWorld,
) -> None:
    # The first lookup leaves the hub's stream to psb-a open; stopping psb-a ends it.
    first = await world.lookup().Lookup(lookup_request())
    await world.nodes["psb-a"].server.stop(None)

    second = await world.lookup().Lookup(lookup_request())

    for response in (first, second):
        document = common_pb2.Document.FromString(response.document.payload)
        assert document.fields["name"] == "张伟"


async def test_every_replica_down_is_unavailable(world: HubWorld) -> None:
    for name in ("psb-a", "psb-b"):
        await world.nodes[name].server.stop(None)

    error = await refused(world, lookup_request())

    assert error.code() == grpc.StatusCode.UNAVAILABLE
    assert "psb-population" in error.details()
    entry = await world.last_entry(event="lookup")
    assert entry.outcome == audit_pb2.FAILED
    assert entry.status == "UNAVAILABLE"


async def test_a_replica_whose_certificate_names_another_node_is_not_trusted(
    world: HubWorld,
) -> None:
    # AMR's node answers at PSB's first address: its certificate is not "psb-adapter".
    nodes = world.nodes
    await world.set_endpoints("psb-population", [nodes["amr"].endpoint])

    error = await refused(world, lookup_request())

    assert error.code() == grpc.StatusCode.UNAVAILABLE
