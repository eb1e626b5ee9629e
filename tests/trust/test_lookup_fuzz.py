"""Property: whatever a department puts in a LookupRequest, the hub answers with a deliberate
status (never INTERNAL or UNKNOWN), keeps serving, audits every refusal, and releases data only
as a grant allows. Hypothesis generates the requests; a running hub (real mTLS, adapter nodes,
audit log) answers them. The generator mixes valid values with arbitrary text, so it reaches
past validation into policy, consent, delegation and routing.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from hub_world import ACME, BIRTH_REGISTRATION, LI, NOBODY, ZHANG, lookup_request
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pki_fixture import TestPki
from trust.hostile_world import (
    AGENCY,
    BIRTH_TYPE,
    INJECTION_PURPOSE,
    REVOKED_AGENCY,
    hostile_world,
)

from exchange.tls import TlsFiles, channel_credentials
from exchange.v1 import common_pb2, lookup_pb2, lookup_pb2_grpc

# What MCA holds: (certificate type, purpose) -> the fields its grants release.
GRANTED: dict[tuple[str, str], frozenset[str]] = {
    ("resident_identity", BIRTH_REGISTRATION): frozenset({"name", "birth_date", "address"}),
    ("resident_identity", "marriage_registration"): frozenset({"name", "birth_date", "address"}),
    ("resident_identity", INJECTION_PURPOSE): frozenset({"name"}),
    ("business_licence", "charity_registration"): frozenset(
        {"company_name", "legal_representative"}
    ),
    (BIRTH_TYPE, BIRTH_REGISTRATION): frozenset({"child_name", "birth_date"}),
}
TYPES = ["resident_identity", "business_licence", "criminal_record", BIRTH_TYPE]
FIELDS = [
    "name",
    "birth_date",
    "address",
    "ethnicity",
    "company_name",
    "legal_representative",
    "registered_capital",
    "convictions",
    "child_name",
]
PURPOSES = [BIRTH_REGISTRATION, "marriage_registration", "charity_registration", "adoption"]
NEVER = {grpc.StatusCode.INTERNAL, grpc.StatusCode.UNKNOWN, grpc.StatusCode.UNAVAILABLE}

text = st.text(st.characters(blacklist_categories=("Cs",)), max_size=80)


def _subjects() -> st.SearchStrategy[common_pb2.Subject | None]:
    subject = st.builds(
        common_pb2.Subject,
        kind=st.integers(min_value=-1, max_value=4),
        id=st.one_of(st.sampled_from([ZHANG, LI, NOBODY, ACME, ZHANG.lower()]), text),
    )
    return st.one_of(st.none(), subject)


def _fuzz(tokens: list[str]) -> dict[str, st.SearchStrategy[object]]:
    """For each LookupRequest field: anything, from well-formed and plausible to hostile."""
    return {
        "certificate_type": st.one_of(st.sampled_from(TYPES), text),
        "subject": _subjects(),
        "fields": st.lists(st.one_of(st.sampled_from(FIELDS), text), max_size=70),
        "purpose": st.one_of(st.sampled_from([*PURPOSES, INJECTION_PURPOSE]), text),
        "matter_id": text,
        "operator_id": text,
        "consent_token": st.one_of(st.just(""), st.sampled_from(tokens), text),
        "request_id": st.one_of(st.just(""), text),
        "delegation_id": st.one_of(st.just(""), st.sampled_from([AGENCY, REVOKED_AGENCY]), text),
    }


def _granted_requests(tokens: list[str]) -> list[dict[str, object]]:
    """Requests MCA is entitled to: the starting points the generator mutates."""
    resident = common_pb2.Subject(kind=common_pb2.RESIDENT_ID, id=ZHANG)
    company = common_pb2.Subject(kind=common_pb2.UNIFIED_SOCIAL_CREDIT_CODE, id=ACME)
    return [
        {},
        {"delegation_id": AGENCY},
        {"purpose": INJECTION_PURPOSE, "fields": ["name"]},
        {
            "certificate_type": "business_licence",
            "subject": company,
            "fields": ["company_name"],
            "purpose": "charity_registration",
        },
        {
            "certificate_type": BIRTH_TYPE,
            "subject": resident,
            "fields": [],
            "consent_token": tokens[0],
        },
    ]


@st.composite
def requests(draw: st.DrawFn, tokens: list[str]) -> lookup_pb2.LookupRequest:
    """A granted request with up to four of its fields replaced by fuzz."""
    values = dict(draw(st.sampled_from(_granted_requests(tokens))))
    fuzz = _fuzz(tokens)
    for name in draw(st.lists(st.sampled_from(sorted(fuzz)), max_size=4, unique=True)):
        values[name] = draw(fuzz[name])
    return lookup_request(**values)


def explore(endpoint: str, tls: TlsFiles, tokens: list[str]) -> int:
    """Run the property against the hub at `endpoint`; how many lookups were granted."""
    granted = 0
    with grpc.secure_channel(endpoint, channel_credentials(tls)) as channel:
        stub = lookup_pb2_grpc.LookupServiceStub(channel)

        @settings(
            max_examples=400,
            deadline=None,
            derandomize=True,
            suppress_health_check=[HealthCheck.too_slow],
        )
        @given(request=requests(tokens))
        def answers_deliberately(request: lookup_pb2.LookupRequest) -> None:
            nonlocal granted
            try:
                response = stub.Lookup(request, timeout=20)
            except grpc.RpcError as error:
                code = error.code()  # type: ignore[attr-defined]
                assert code not in NEVER, (code, error.details())  # type: ignore[attr-defined]
                metadata = dict(error.trailing_metadata() or ())  # type: ignore[attr-defined]
                assert "exchange-receipt-bin" in metadata, f"{code.name} not audited"
                return
            document = common_pb2.Document.FromString(response.document.payload)
            allowed = GRANTED.get((request.certificate_type, request.purpose))
            assert allowed is not None, "released without a grant"
            assert set(document.fields) <= allowed, "released beyond the grant"
            if request.fields:
                assert set(document.fields) <= set(request.fields), "released unasked fields"
            assert document.subject.id == request.subject.id.upper()
            assert response.receipt.signature
            granted += 1

        answers_deliberately()
    return granted


async def test_no_lookup_request_breaks_the_hub_or_releases_ungranted_data(
    tmp_path: Path, pki: TestPki
) -> None:
    async with hostile_world(tmp_path, pki) as hostile:
        world = hostile.world
        tokens = [hostile.consent(reusable=True), hostile.consent(), hostile.consent(subject=LI)]

        granted = await asyncio.to_thread(explore, world.endpoint, world.mca, tokens)

        # The generator reaches the grants, and the hub still serves afterwards.
        assert granted > 0
        health = health_pb2_grpc.HealthStub(world.channel(world.mca))
        status = await health.Check(health_pb2.HealthCheckRequest())
        assert status.status == health_pb2.HealthCheckResponse.SERVING
        answer = await world.lookup().Lookup(lookup_request())
        assert common_pb2.Document.FromString(answer.document.payload).fields["name"] == "张伟"
