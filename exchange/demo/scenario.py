"""The demo's story: register the catalogue as the administrator, then handle a birth
registration at the service-centre counter with lookups that are granted and refused.

Everything goes through the public gRPC API over mutual TLS, exactly as a department system
would call it, and the requester checks the issuer's signature itself with `cryptography`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import date

import grpc
import grpc.aio
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from audit.signing import SignatureError, verify_receipt
from exchange.demo.catalogue import (
    CERTIFICATE_TYPES,
    DEPARTMENTS,
    GRANTS,
    PURPOSE,
    REQUESTER,
    REQUESTER_NAME,
)
from exchange.demo.data import DemoPopulation
from exchange.subject import make_resident_id
from exchange.tls import TlsFiles, channel_credentials
from exchange.v1 import (
    common_pb2,
    lookup_pb2,
    lookup_pb2_grpc,
    registry_pb2,
    registry_pb2_grpc,
)

RESIDENT = common_pb2.RESIDENT_ID
COMPANY = common_pb2.UNIFIED_SOCIAL_CREDIT_CODE
Print = Callable[[str], None]


def secure_channel(target: str, identity: TlsFiles) -> grpc.aio.Channel:
    """A channel to the hub that presents `identity`'s certificate."""
    return grpc.aio.secure_channel(target, channel_credentials(identity))


async def register_catalogue(
    target: str, admin: TlsFiles, node_ports: dict[str, int], signing_keys: dict[str, bytes]
) -> str:
    """Register departments, certificate types, data sources and grants; returns a summary."""
    async with secure_channel(target, admin) as channel:
        registry = registry_pb2_grpc.RegistryServiceStub(channel)
        for department in DEPARTMENTS:
            key = registry_pb2.SigningKey(
                public_key=signing_keys[department.code], algorithm="Ed25519"
            )
            await registry.RegisterDepartment(
                registry_pb2.Department(
                    code=department.code, name=department.name, signing_keys=[key]
                )
            )
        await registry.RegisterDepartment(
            registry_pb2.Department(code=REQUESTER, name=REQUESTER_NAME)
        )
        for spec in CERTIFICATE_TYPES:
            await registry.RegisterCertificateType(
                registry_pb2.CertificateType(
                    code=spec.code,
                    name=spec.name,
                    issuing_department=spec.issuer,
                    fields=[
                        registry_pb2.FieldSpec(name=name, description=description)
                        for name, (_, description) in spec.fields.items()
                    ],
                    sharing_class=common_pb2.UNCONDITIONAL,
                    subject_kind=common_pb2.SubjectKind.Value(spec.subject_kind),
                )
            )
        for department in DEPARTMENTS:
            await registry.RegisterDataSource(
                registry_pb2.DataSource(
                    id=f"{department.code.lower()}-records",
                    issuing_department=department.code,
                    certificate_types=[
                        s.code for s in CERTIFICATE_TYPES if s.issuer == department.code
                    ],
                    endpoints=[f"127.0.0.1:{node_ports[department.code]}"],
                    tls_identity=department.node,
                    enabled=True,
                )
            )
        for certificate_type, fields in GRANTS.items():
            await registry.RegisterGrant(
                registry_pb2.Grant(
                    requesting_department=REQUESTER,
                    certificate_type=certificate_type,
                    fields=fields,
                    purposes=[PURPOSE],
                )
            )
    return (
        f"{len(DEPARTMENTS) + 1} departments, {len(CERTIFICATE_TYPES)} certificate types, "
        f"{len(DEPARTMENTS)} data sources, {len(GRANTS)} grants for {REQUESTER}"
    )


@dataclass(frozen=True)
class PlannedLookup:
    certificate_type: str
    kind: int
    subject_id: str
    fields: Sequence[str]
    why: str


def plan_lookups(population: DemoPopulation) -> list[PlannedLookup]:
    """A family registering a newborn, plus the requests the exchange must refuse."""
    family = population.families[0]
    mother = family.mother.id
    wrong_check = "0" if mother[17] != "0" else "1"
    # Born 1970: outside the population's years, so a well-formed ID nobody holds.
    unknown = make_resident_id(mother[:6], date(1970, 1, 1), 998)
    return [
        PlannedLookup(
            "birth_medical_certificate",
            RESIDENT,
            family.child.id,
            (),
            "the newborn's birth medical certificate",
        ),
        PlannedLookup(
            "resident_identity",
            RESIDENT,
            mother,
            ("name", "birth_date", "address", "ethnicity"),
            "the mother's identity card (ethnicity asked for, not granted)",
        ),
        PlannedLookup(
            "resident_identity", RESIDENT, family.father.id, (), "the father's identity card"
        ),
        PlannedLookup(
            "marriage_certificate", RESIDENT, mother, (), "the parents' marriage certificate"
        ),
        PlannedLookup(
            "household_registration",
            RESIDENT,
            family.father.id,
            (),
            "the household the child will join",
        ),
        PlannedLookup(
            "business_licence",
            COMPANY,
            population.companies[0]["uscc"],
            (),
            "a company's business licence: no grant covers it",
        ),
        PlannedLookup(
            "resident_identity",
            RESIDENT,
            mother[:17] + wrong_check,
            (),
            "the mother's ID mistyped (wrong check character)",
        ),
        PlannedLookup("resident_identity", RESIDENT, unknown, (), "a valid ID that nobody holds"),
    ]


@dataclass
class Tally:
    lookups: int = 0
    granted: int = 0
    refused: int = 0
    unverified: int = 0


async def perform_lookups(
    target: str,
    requester: TlsFiles,
    planned: Sequence[PlannedLookup],
    issuer_keys: dict[str, bytes],
    log_key: bytes,
    out: Print,
) -> Tally:
    """Ask for each planned certificate as the service-centre counter and print the outcome."""
    tally = Tally()
    async with secure_channel(target, requester) as channel:
        lookup = lookup_pb2_grpc.LookupServiceStub(channel)
        for number, plan in enumerate(planned, start=1):
            tally.lookups += 1
            out(f"[{number}] {plan.why}")
            out(f"    {plan.certificate_type} for {mask(plan.subject_id)}")
            request = lookup_pb2.LookupRequest(
                certificate_type=plan.certificate_type,
                subject=common_pb2.Subject(kind=plan.kind, id=plan.subject_id),  # type: ignore[arg-type]
                fields=plan.fields,
                purpose=PURPOSE,
                matter_id="BR-2026-000123",
                operator_id="counter-07",
            )
            try:
                response = await lookup.Lookup(request, timeout=10)
            except grpc.aio.AioRpcError as error:
                tally.refused += 1
                out(f"    REFUSED  {error.code().name}: {error.details()}")
                continue
            tally.granted += 1
            if not describe_granted(response, issuer_keys, log_key, out):
                tally.unverified += 1
    return tally


def describe_granted(
    response: lookup_pb2.LookupResponse, issuer_keys: dict[str, bytes], log_key: bytes, out: Print
) -> bool:
    """Print a released document after checking its issuer signature and the audit receipt."""
    signed = response.document
    document = common_pb2.Document.FromString(signed.payload)
    signature_ok = verifies(issuer_keys.get(document.issuer, b""), signed.signature, signed.payload)
    receipt = response.receipt
    try:
        verify_receipt(receipt, log_key)  # the batch signature and this entry's path in it
        receipt_ok = True
    except SignatureError:
        receipt_ok = False
    out(
        f"    GRANTED  issued by {document.issuer}, "
        f"issuer signature {'verified' if signature_ok else 'DID NOT VERIFY'} "
        f"({signed.algorithm}, key {signed.key_id}); "
        f"audit entry #{receipt.entry_index}, receipt {'verified' if receipt_ok else 'INVALID'}"
    )
    for name in sorted(document.fields):
        out(f"      {name:<22} {document.fields[name]}")
    return signature_ok and receipt_ok


def verifies(public_key: bytes, signature: bytes, payload: bytes) -> bool:
    """Ed25519 verification with nothing but `cryptography`, as any department could do."""
    try:
        Ed25519PublicKey.from_public_bytes(public_key).verify(signature, payload)
    except (InvalidSignature, ValueError):
        return False
    return True


def mask(subject_id: str) -> str:
    """Show enough of an identifier to recognise it, not enough to copy it."""
    return subject_id[:6] + "*" * 8 + subject_id[14:] if len(subject_id) == 18 else subject_id
