"""The registry's trust records on SQLite and PostgreSQL: department quotas, consent issuers and
their keys, delegations (代办); their validation, snapshots, and audited RPCs.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, date, datetime
from pathlib import Path

import grpc
import grpc.aio
import pytest
import sqlalchemy as sa
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from pki_fixture import TestPki
from registry.registry_catalogue import JAN_2025, JAN_2030, psb, public_key, seed
from registry.test_registry_service import IdentityFromCertificate, RecordingAudit
from trust.consent_world import LI, ZHANG

from audit.events import EventKind, Outcome, SubjectId
from exchange.consent_uses import consent_uses
from exchange.db import alembic_config, make_engine, metadata, upgrade
from exchange.errors import ExchangeError
from exchange.pki import key_id_for
from exchange.registry import (
    ConsentIssuer,
    Delegation,
    Department,
    Quota,
    RegistryStore,
    SigningKey,
)
from exchange.registry.service import RegistryServicer
from exchange.subject import make_resident_id
from exchange.tls import channel_credentials, server_credentials
from exchange.v1 import common_pb2, registry_pb2, registry_pb2_grpc

WANG = SubjectId("RESIDENT_ID", make_resident_id("440305", date(2001, 1, 9), 789))
TRUST_TABLES = {
    "departments",
    "consent_issuers",
    "consent_issuer_keys",
    "delegations",
    "consent_uses",
}
METHOD = "/exchange.v1.RegistryService/"


@pytest.fixture
def engine(database_url: str) -> Iterator[sa.Engine]:
    engine = make_engine(database_url)
    upgrade(engine)
    yield engine
    engine.dispose()


@pytest.fixture
def store(engine: sa.Engine) -> RegistryStore:
    return RegistryStore(engine)


def portal() -> ConsentIssuer:
    key = SigningKey(key_id="", public_key=public_key(), algorithm="", not_before=JAN_2025)
    return ConsentIssuer(id="gov-portal", name="政务服务网", signing_keys=(key,))


def agency() -> Delegation:
    """Li acts for Zhang (an elderly resident) on her resident identity, for two purposes."""
    return Delegation(
        id="",
        principal=SubjectId("RESIDENT_ID", ZHANG.id.lower()),
        agent=LI,
        certificate_types=("resident_identity",),
        purposes=("subsistence_allowance", "pension"),
        valid_from=JAN_2025,
        valid_until=JAN_2030,
    )


# --- the migration -----------------------------------------------------------------------------


def test_the_trust_migration_matches_the_tables_and_downgrades(engine: sa.Engine) -> None:
    assert consent_uses.name == "consent_uses"  # its table is on the shared metadata
    with engine.connect() as conn:
        context = MigrationContext.configure(
            conn,
            opts={
                "include_object": lambda obj, name, type_, _reflected, _compare_to: (
                    (obj.name if type_ == "table" else obj.table.name) in TRUST_TABLES
                )
            },
        )
        assert context.get_current_revision() == "0003_trust"
        assert compare_metadata(context, metadata) == []

    command.downgrade(alembic_config(engine), "0002_audit_log")
    tables = set(sa.inspect(engine).get_table_names())
    assert not tables & (TRUST_TABLES - {"departments"})
    assert "quota_burst" not in {c["name"] for c in sa.inspect(engine).get_columns("departments")}
    upgrade(engine)
    assert set(sa.inspect(engine).get_table_names()) >= TRUST_TABLES


# --- quotas ------------------------------------------------------------------------------------


def test_a_department_quota_round_trips_and_unset_means_unlimited(store: RegistryStore) -> None:
    catalogue = seed(store)
    assert catalogue.psb.quota == Quota()
    assert not catalogue.psb.to_proto().HasField("quota")

    limited = dataclasses.replace(
        catalogue.civil_affairs, quota=Quota(requests_per_second=20, burst=40, max_concurrent=8)
    )
    _, after = store.update_department(limited)

    assert after.quota == Quota(20, 40, 8)
    (listed,) = [d for d in store.list_departments() if d.code == "MZJ"]
    assert listed.quota == Quota(20, 40, 8)
    assert Department.from_proto(listed.to_proto()) == listed


@pytest.mark.parametrize(
    ("quota", "message"),
    [
        (
            Quota(requests_per_second=5),
            "department.quota.burst: must be at least 1 when requests_per_second is set",
        ),
        (Quota(burst=5), "department.quota.burst: has no effect without requests_per_second"),
        (Quota(max_concurrent=2_000_000), "department.quota.max_concurrent: at most 1000000"),
    ],
)
def test_a_quota_that_makes_no_sense_is_refused(
    store: RegistryStore, quota: Quota, message: str
) -> None:
    with pytest.raises(ExchangeError) as refused:
        store.register_department(dataclasses.replace(psb(), quota=quota))
    assert refused.value.status is grpc.StatusCode.INVALID_ARGUMENT
    assert refused.value.message == message
    assert store.list_departments() == []


# --- consent issuers ---------------------------------------------------------------------------


async def test_a_consent_issuer_and_its_keys_reach_the_snapshot(store: RegistryStore) -> None:
    stored = store.register_consent_issuer(portal())
    key = stored.signing_keys[0]
    assert key.key_id == key_id_for(key.public_key)
    assert store.list_consent_issuers() == [stored]

    snapshot = await store.snapshot()
    assert snapshot.consent_issuer("gov-portal") == stored
    assert snapshot.consent_key("gov-portal", key.key_id) == key
    assert snapshot.consent_issuer("nobody") is None
    assert snapshot.consent_key("gov-portal", "0000000000000000") is None

    # Key rotation: a new key, the old one retired at a date.
    rotated = SigningKey("", public_key(), "Ed25519", not_before=JAN_2030)
    retired = dataclasses.replace(key, not_after=JAN_2030)
    _, after = store.update_consent_issuer(
        dataclasses.replace(stored, signing_keys=(rotated, retired))
    )
    snapshot = await store.snapshot()
    assert snapshot.consent_key("gov-portal", key.key_id) == retired
    assert snapshot.consent_key("gov-portal", after.signing_keys[0].key_id) is not None


def test_one_key_serves_one_purpose_only(store: RegistryStore) -> None:
    catalogue = seed(store)
    psb_key = catalogue.psb.signing_keys[0]
    with pytest.raises(ExchangeError) as refused:
        store.register_consent_issuer(dataclasses.replace(portal(), signing_keys=(psb_key,)))
    assert refused.value.status is grpc.StatusCode.ALREADY_EXISTS
    assert refused.value.message == (
        f"consent_issuer.signing_keys[0].key_id: key {psb_key.key_id!r} is already registered "
        "to department 'PSB'"
    )
    issuer = store.register_consent_issuer(portal())
    with pytest.raises(ExchangeError, match="already registered to consent issuer 'gov-portal'"):
        store.update_department(
            dataclasses.replace(catalogue.civil_affairs, signing_keys=issuer.signing_keys)
        )


# --- delegations -------------------------------------------------------------------------------


async def test_a_delegation_round_trips_normalised_and_reaches_the_snapshot(
    store: RegistryStore,
) -> None:
    seed(store)
    stored = store.register_delegation(agency())

    assert stored.id.startswith("d-")
    assert stored.principal == ZHANG  # upper-cased, as the audit log files subjects
    assert store.list_delegations() == [stored]
    snapshot = await store.snapshot()
    assert snapshot.delegation(stored.id) == stored
    assert snapshot.delegation("d-nope") is None
    assert stored.is_valid_at(datetime(2026, 1, 1, tzinfo=UTC))
    assert not stored.is_valid_at(JAN_2030)
    assert stored.covers("resident_identity", "pension")
    assert not stored.covers("resident_identity", "adoption")
    assert not stored.covers("birth_medical_certificate", "pension")
    assert Delegation.from_proto(stored.to_proto()) == stored


async def test_a_revoked_delegation_stays_on_record_and_cannot_be_reinstated(
    store: RegistryStore,
) -> None:
    seed(store)
    stored = store.register_delegation(agency())
    _, revoked = store.update_delegation(dataclasses.replace(stored, revoked=True))

    snapshot = await store.snapshot()
    assert snapshot.delegation(stored.id) == revoked
    assert not revoked.is_valid_at(datetime(2026, 1, 1, tzinfo=UTC))
    with pytest.raises(ExchangeError, match="a revoked delegation cannot be reinstated"):
        store.update_delegation(stored)
    # Nor rewritten while revoked: the record says what authority the agent had.
    wider = dataclasses.replace(revoked, purposes=(*revoked.purposes, "adoption"))
    with pytest.raises(ExchangeError, match="a revoked delegation cannot be changed"):
        store.update_delegation(wider)
    assert store.list_delegations() == [revoked]


Change = Callable[[RegistryStore, Delegation], object]

DELEGATION_REFUSALS: list[tuple[str, Change, str]] = [
    (
        "principal with a bad check character",
        lambda s, d: s.register_delegation(
            dataclasses.replace(agency(), principal=SubjectId("RESIDENT_ID", ZHANG.id[:17] + "Y"))
        ),
        "delegation.principal.id: resident ID character 18 is 'Y'",
    ),
    (
        "agent without a kind",
        lambda s, d: s.register_delegation(
            dataclasses.replace(agency(), agent=SubjectId("SUBJECT_KIND_UNSPECIFIED", LI.id))
        ),
        "delegation.agent.kind: must be RESIDENT_ID or UNIFIED_SOCIAL_CREDIT_CODE",
    ),
    (
        "agent is the principal",
        lambda s, d: s.register_delegation(dataclasses.replace(agency(), agent=ZHANG)),
        "delegation.agent: must be someone other than the principal",
    ),
    (
        "unknown certificate type",
        lambda s, d: s.register_delegation(
            dataclasses.replace(agency(), certificate_types=("marriage",))
        ),
        "delegation.certificate_types[0]: unknown certificate type 'marriage'",
    ),
    (
        "empty purpose",
        lambda s, d: s.register_delegation(dataclasses.replace(agency(), purposes=("",))),
        "delegation.purposes[0]: required",
    ),
    (
        "window backwards",
        lambda s, d: s.register_delegation(
            dataclasses.replace(agency(), valid_from=JAN_2030, valid_until=JAN_2025)
        ),
        "delegation.valid_until: 2025-01-01T00:00:00+00:00 is not after valid_from",
    ),
    (
        "another agent on update",
        lambda s, d: s.update_delegation(dataclasses.replace(d, agent=WANG)),
        "delegation.agent: cannot change; register a new delegation instead",
    ),
    (
        "unknown delegation",
        lambda s, d: s.update_delegation(dataclasses.replace(d, id="d-missing")),
        "delegation 'd-missing' is not registered",
    ),
]


@pytest.mark.parametrize(
    ("change", "message"),
    [pytest.param(change, message, id=name) for name, change, message in DELEGATION_REFUSALS],
)
def test_a_delegation_that_does_not_fit_is_refused(
    store: RegistryStore, change: Change, message: str
) -> None:
    seed(store)
    stored = store.register_delegation(agency())
    with pytest.raises(ExchangeError) as refused:
        change(store, stored)
    assert refused.value.message.startswith(message), refused.value.message
    assert store.list_delegations() == [stored]


# --- RegistryService -----------------------------------------------------------------------------


@dataclass
class Registry:
    stub: registry_pb2_grpc.RegistryServiceStub
    audit: RecordingAudit


@pytest.fixture
async def registry(pki: TestPki, tmp_path: Path) -> AsyncIterator[Registry]:
    engine = make_engine(f"sqlite:///{tmp_path / 'exchange.db'}")
    upgrade(engine)
    seed(RegistryStore(engine))
    audit = RecordingAudit(engine)
    server = grpc.aio.server(interceptors=[IdentityFromCertificate()])
    registry_pb2_grpc.add_RegistryServiceServicer_to_server(
        RegistryServicer(RegistryStore(engine), audit), server
    )
    port = server.add_secure_port(
        "127.0.0.1:0", server_credentials(pki.identity("hub", "hub", "EXCHANGE"))
    )
    await server.start()
    admin = channel_credentials(pki.identity("registry-admin", "admin", "EXCHANGE"))
    async with grpc.aio.secure_channel(f"127.0.0.1:{port}", admin) as channel:
        yield Registry(registry_pb2_grpc.RegistryServiceStub(channel), audit)
    await server.stop(None)
    engine.dispose()


async def test_consent_issuers_are_registered_listed_and_audited(registry: Registry) -> None:
    stored = await registry.stub.RegisterConsentIssuer(portal().to_proto())
    listed = await registry.stub.ListConsentIssuers(registry_pb2.ListConsentIssuersRequest())
    renamed = registry_pb2.ConsentIssuer()
    renamed.CopyFrom(stored)
    renamed.name = "一网通办"
    await registry.stub.UpdateConsentIssuer(renamed)

    assert list(listed.consent_issuers) == [stored]
    register, update = registry.audit.events
    assert (register.method, register.event, register.outcome) == (
        METHOD + "RegisterConsentIssuer",
        EventKind.REGISTRY_CHANGE,
        Outcome.GRANTED,
    )
    assert json.loads(update.change_before)["name"] == "政务服务网"
    assert json.loads(update.change_after)["name"] == "一网通办"


async def test_a_department_quota_is_set_through_the_registry(registry: Registry) -> None:
    departments = await registry.stub.ListDepartments(registry_pb2.ListDepartmentsRequest())
    (mzj,) = [d for d in departments.departments if d.code == "MZJ"]
    mzj.quota.requests_per_second = 5
    mzj.quota.burst = 10

    answer = await registry.stub.UpdateDepartment(mzj)
    mzj.quota.burst = 0
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await registry.stub.UpdateDepartment(mzj)

    assert (answer.quota.requests_per_second, answer.quota.burst) == (5, 10)
    assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert json.loads(registry.audit.events[0].change_after)["quota"]["burst"] == 10
    assert registry.audit.events[1].outcome is Outcome.REFUSED


async def test_a_delegation_change_is_audited_about_the_principal_without_ids_in_clear(
    registry: Registry,
) -> None:
    stored = await registry.stub.RegisterDelegation(agency().to_proto())
    stored.revoked = True
    await registry.stub.UpdateDelegation(stored)
    bad = agency().to_proto()
    bad.agent.CopyFrom(common_pb2.Subject(kind=common_pb2.RESIDENT_ID, id="not-an-id"))
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await registry.stub.RegisterDelegation(bad)
    listed = await registry.stub.ListDelegations(registry_pb2.ListDelegationsRequest())

    assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert [d.revoked for d in listed.delegations] == [True]
    register, revoke, refusal = registry.audit.events
    assert [e.method for e in (register, revoke, refusal)] == [
        METHOD + "RegisterDelegation",
        METHOD + "UpdateDelegation",
        METHOD + "RegisterDelegation",
    ]
    for event in (register, revoke, refusal):
        assert event.subject == ZHANG  # findable in Zhang's access report
        for text in (event.change_before, event.change_after):
            assert ZHANG.id not in text and LI.id not in text
    assert json.loads(register.change_after)["principal"]["id"] == "*" * 14 + ZHANG.id[-4:]
    assert json.loads(revoke.change_after)["revoked"] is True
    assert refusal.outcome is Outcome.REFUSED
