"""The registry store on SQLite and PostgreSQL: round trips, refusals, versions and snapshots.

Every test here runs twice (fixture `database_url`): on a SQLite file and a PostgreSQL schema.
"""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import Callable
from datetime import UTC, datetime

import grpc
import pytest
import sqlalchemy as sa
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from registry.registry_catalogue import (
    JAN_2025,
    JAN_2030,
    Catalogue,
    allowance_grant,
    civil_affairs,
    psb,
    psb_source,
    public_key,
    resident_identity,
    seed,
)

from exchange.db import make_engine, metadata, upgrade
from exchange.errors import ExchangeError
from exchange.pki import key_id_for
from exchange.registry import FieldSpec, RegistryStore, SigningKey
from exchange.registry.tables import registry_version

REGISTRY_TABLES = {
    "departments",
    "signing_keys",
    "certificate_types",
    "data_sources",
    "grants",
    "registry_version",
    "consent_issuers",
    "consent_issuer_keys",
    "delegations",
}


def version_of(engine: sa.Engine) -> int:
    with engine.connect() as conn:
        return int(conn.execute(sa.select(registry_version.c.version)).scalar_one())


# --- migration -------------------------------------------------------------------------------


def test_migration_runs_twice_and_matches_the_tables(engine: sa.Engine) -> None:
    upgrade(engine)  # the fixture already upgraded once

    assert set(sa.inspect(engine).get_table_names()) >= REGISTRY_TABLES
    assert version_of(engine) == 0
    with engine.connect() as conn:
        context = MigrationContext.configure(
            conn,
            opts={
                # Other parts' tables share the metadata once imported; compare only ours.
                "include_object": lambda obj, name, type_, _reflected, _compare_to: (
                    (obj.name if type_ == "table" else obj.table.name) in REGISTRY_TABLES
                )
            },
        )
        assert context.get_current_revision() is not None
        assert compare_metadata(context, metadata) == []


# --- round trips -----------------------------------------------------------------------------


def test_department_round_trip_derives_key_id_and_keeps_utc(store: RegistryStore) -> None:
    department = psb()
    stored = store.register_department(department)

    key = stored.signing_keys[0]
    assert key.key_id == key_id_for(department.signing_keys[0].public_key)
    assert key.algorithm == "Ed25519"
    listed = store.list_departments()
    assert listed == [stored]
    assert listed[0].signing_keys[0].not_before == JAN_2025
    assert listed[0].signing_keys[0].not_before.tzinfo == UTC


def test_department_update_replaces_name_and_keys(store: RegistryStore) -> None:
    stored = store.register_department(psb())
    rotated = SigningKey(key_id="", public_key=public_key(), not_after=JAN_2030)
    changed = dataclasses.replace(
        stored, name="市公安局", signing_keys=(rotated, *stored.signing_keys)
    )

    before, after = store.update_department(changed)

    assert before == stored
    assert after.name == "市公安局"
    assert [k.key_id for k in after.signing_keys] == [
        key_id_for(rotated.public_key),
        stored.signing_keys[0].key_id,
    ]
    assert store.list_departments() == [after]


def test_certificate_type_round_trip_and_update(store: RegistryStore) -> None:
    store.register_department(psb())
    stored = store.register_certificate_type(resident_identity())
    assert store.list_certificate_types() == [stored]

    wider = dataclasses.replace(
        stored,
        fields=(*stored.fields, FieldSpec("photo", "照片")),
        sharing_class="CONDITIONAL",
    )
    before, after = store.update_certificate_type(wider)

    assert (before, after) == (stored, wider)
    assert store.list_certificate_types()[0].field_names() == (
        "name",
        "birth_date",
        "address",
        "photo",
    )
    assert store.list_certificate_types()[0].sharing_class == "CONDITIONAL"


def test_data_source_round_trip_and_disable(store: RegistryStore) -> None:
    store.register_department(psb())
    store.register_certificate_type(resident_identity())
    stored = store.register_data_source(psb_source())
    assert store.list_data_sources() == [stored]

    disabled = dataclasses.replace(stored, enabled=False, endpoints=("[::1]:7003",))
    before, after = store.update_data_source(disabled)

    assert (before, after) == (stored, disabled)
    assert store.list_data_sources() == [disabled]


def test_grant_round_trip_assigns_id_and_returns_utc(store: RegistryStore) -> None:
    catalogue = seed(store)
    grant = catalogue.grant

    assert grant.id.startswith("g-")
    listed = store.list_grants()
    assert listed == [grant]
    assert listed[0].valid_from == JAN_2025 and listed[0].valid_from.tzinfo == UTC
    assert listed[0].valid_until == JAN_2030
    assert store.list_grants("MZJ") == [grant]
    assert store.list_grants("PSB") == []

    narrower = dataclasses.replace(grant, fields=("name",), valid_until=None)
    before, after = store.update_grant(narrower)
    assert (before, after) == (grant, narrower)
    assert store.list_grants() == [narrower]


def test_grant_with_a_chosen_id_keeps_it(store: RegistryStore) -> None:
    seed(store)
    grant = store.register_grant(dataclasses.replace(allowance_grant(), id="mzj-allowance-2025"))
    assert grant.id == "mzj-allowance-2025"
    assert grant in store.list_grants("MZJ")


# --- refusals --------------------------------------------------------------------------------

Change = Callable[[RegistryStore, Catalogue], object]


def _department_with_key(**changes: object) -> Callable[[RegistryStore, Catalogue], object]:
    def change(store: RegistryStore, _: Catalogue) -> object:
        department = psb()
        key = dataclasses.replace(department.signing_keys[0], **changes)
        return store.register_department(
            dataclasses.replace(department, code="GAJ", signing_keys=(key,))
        )

    return change


REFUSALS: list[tuple[str, Change, grpc.StatusCode, str]] = [
    # Taken codes and unknown records.
    (
        "department taken",
        lambda s, c: s.register_department(civil_affairs()),
        grpc.StatusCode.ALREADY_EXISTS,
        "department 'MZJ' already exists",
    ),
    (
        "certificate type taken",
        lambda s, c: s.register_certificate_type(resident_identity()),
        grpc.StatusCode.ALREADY_EXISTS,
        "certificate type 'resident_identity' already exists",
    ),
    (
        "data source taken",
        lambda s, c: s.register_data_source(psb_source()),
        grpc.StatusCode.ALREADY_EXISTS,
        "data source 'psb-main' already exists",
    ),
    (
        "grant taken",
        lambda s, c: s.register_grant(c.grant),
        grpc.StatusCode.ALREADY_EXISTS,
        "grant '<id>' already exists",
    ),
    (
        "signing key of another department",
        lambda s, c: s.register_department(
            dataclasses.replace(c.civil_affairs, code="GAJ", signing_keys=c.psb.signing_keys)
        ),
        grpc.StatusCode.ALREADY_EXISTS,
        "department.signing_keys[0].key_id: key '<key>' is already registered to department 'PSB'",
    ),
    (
        "update unknown department",
        lambda s, c: s.update_department(dataclasses.replace(c.psb, code="NOPE")),
        grpc.StatusCode.NOT_FOUND,
        "department 'NOPE' is not registered",
    ),
    (
        "update unknown certificate type",
        lambda s, c: s.update_certificate_type(
            dataclasses.replace(c.resident_identity, code="marriage")
        ),
        grpc.StatusCode.NOT_FOUND,
        "certificate type 'marriage' is not registered",
    ),
    (
        "update unknown data source",
        lambda s, c: s.update_data_source(dataclasses.replace(c.psb_source, id="psb-2")),
        grpc.StatusCode.NOT_FOUND,
        "data source 'psb-2' is not registered",
    ),
    (
        "update unknown grant",
        lambda s, c: s.update_grant(dataclasses.replace(c.grant, id="g-missing")),
        grpc.StatusCode.NOT_FOUND,
        "grant 'g-missing' is not registered",
    ),
    # Departments and their keys.
    (
        "empty department code",
        lambda s, c: s.register_department(dataclasses.replace(civil_affairs(), code="")),
        grpc.StatusCode.INVALID_ARGUMENT,
        "department.code: required",
    ),
    (
        "department code with spaces",
        lambda s, c: s.register_department(dataclasses.replace(civil_affairs(), code="M Z J")),
        grpc.StatusCode.INVALID_ARGUMENT,
        "department.code: 'M Z J' must be 1-64 letters, digits, '_', '.' or '-', "
        "starting with a letter or digit",
    ),
    (
        "department without a name",
        lambda s, c: s.register_department(
            dataclasses.replace(civil_affairs(), code="X", name=" ")
        ),
        grpc.StatusCode.INVALID_ARGUMENT,
        "department.name: required",
    ),
    (
        "short public key",
        _department_with_key(public_key=b"\x01" * 31),
        grpc.StatusCode.INVALID_ARGUMENT,
        "department.signing_keys[0].public_key: an Ed25519 public key has 32 bytes, got 31",
    ),
    (
        "small-order public key",  # the identity point: libsodium refuses every signature
        _department_with_key(public_key=b"\x01" + bytes(31)),
        grpc.StatusCode.INVALID_ARGUMENT,
        "department.signing_keys[0].public_key: not a usable Ed25519 public key",
    ),
    (
        "public key that is no point of the curve",
        _department_with_key(public_key=b"\x02" + bytes(31)),
        grpc.StatusCode.INVALID_ARGUMENT,
        "department.signing_keys[0].public_key: not a usable Ed25519 public key",
    ),
    (
        "other algorithm",
        _department_with_key(algorithm="RSA"),
        grpc.StatusCode.INVALID_ARGUMENT,
        "department.signing_keys[0].algorithm: 'RSA' is not supported, use 'Ed25519'",
    ),
    (
        "key window backwards",
        _department_with_key(not_before=JAN_2030, not_after=JAN_2025),
        grpc.StatusCode.INVALID_ARGUMENT,
        "department.signing_keys[0].not_after: 2025-01-01T00:00:00+00:00 is not after "
        "not_before 2030-01-01T00:00:00+00:00",
    ),
    (
        "key id that is not the key's",
        _department_with_key(key_id="0123456789abcdef"),
        grpc.StatusCode.INVALID_ARGUMENT,
        "department.signing_keys[0].key_id: '0123456789abcdef' does not identify this key",
    ),
    # Certificate types.
    (
        "type of an unknown department",
        lambda s, c: s.register_certificate_type(
            dataclasses.replace(resident_identity(), code="passport", issuing_department="NOPE")
        ),
        grpc.StatusCode.INVALID_ARGUMENT,
        "certificate_type.issuing_department: unknown department 'NOPE'",
    ),
    (
        "type without sharing class",
        lambda s, c: s.register_certificate_type(
            dataclasses.replace(
                resident_identity(), code="passport", sharing_class="SHARING_CLASS_UNSPECIFIED"
            )
        ),
        grpc.StatusCode.INVALID_ARGUMENT,
        "certificate_type.sharing_class: must be specified",
    ),
    (
        "type without subject kind",
        lambda s, c: s.register_certificate_type(
            dataclasses.replace(
                resident_identity(), code="passport", subject_kind="SUBJECT_KIND_UNSPECIFIED"
            )
        ),
        grpc.StatusCode.INVALID_ARGUMENT,
        "certificate_type.subject_kind: must be specified",
    ),
    (
        "type with an unknown sharing class number",
        lambda s, c: s.register_certificate_type(
            dataclasses.replace(resident_identity(), code="passport", sharing_class="7")
        ),
        grpc.StatusCode.INVALID_ARGUMENT,
        "certificate_type.sharing_class: unknown value 7",
    ),
    (
        "type without fields",
        lambda s, c: s.register_certificate_type(
            dataclasses.replace(resident_identity(), code="passport", fields=())
        ),
        grpc.StatusCode.INVALID_ARGUMENT,
        "certificate_type.fields: at least one field is required",
    ),
    (
        "type with a field twice",
        lambda s, c: s.register_certificate_type(
            dataclasses.replace(
                resident_identity(), code="passport", fields=(FieldSpec("name"), FieldSpec("name"))
            )
        ),
        grpc.StatusCode.INVALID_ARGUMENT,
        "certificate_type.fields: field 'name' is listed twice",
    ),
    (
        "type with a malformed field name",
        lambda s, c: s.register_certificate_type(
            dataclasses.replace(resident_identity(), code="passport", fields=(FieldSpec("1st"),))
        ),
        grpc.StatusCode.INVALID_ARGUMENT,
        "certificate_type.fields[0].name: '1st' must be 1-64 letters, digits or '_'",
    ),
    (
        "type update dropping a granted field",
        lambda s, c: s.update_certificate_type(
            dataclasses.replace(c.resident_identity, fields=(FieldSpec("name"),))
        ),
        grpc.StatusCode.INVALID_ARGUMENT,
        "certificate_type.fields: 'birth_date' is still granted by grant '<id>'",
    ),
    (
        "type update moving it away from its data source's department",
        lambda s, c: s.update_certificate_type(
            dataclasses.replace(c.resident_identity, issuing_department="MZJ")
        ),
        grpc.StatusCode.INVALID_ARGUMENT,
        "certificate_type.issuing_department: data source 'psb-main' of department 'PSB' "
        "serves this type",
    ),
    # Data sources.
    (
        "source of an unknown department",
        lambda s, c: s.register_data_source(
            dataclasses.replace(psb_source(), id="x", issuing_department="NOPE")
        ),
        grpc.StatusCode.INVALID_ARGUMENT,
        "data_source.issuing_department: unknown department 'NOPE'",
    ),
    (
        "source of an unknown type",
        lambda s, c: s.register_data_source(
            dataclasses.replace(psb_source(), id="x", certificate_types=("marriage",))
        ),
        grpc.StatusCode.INVALID_ARGUMENT,
        "data_source.certificate_types[0]: unknown certificate type 'marriage'",
    ),
    (
        "source serving another department's type",
        lambda s, c: s.register_data_source(
            dataclasses.replace(psb_source(), id="x", issuing_department="MZJ")
        ),
        grpc.StatusCode.INVALID_ARGUMENT,
        "data_source.certificate_types[0]: 'resident_identity' is issued by department 'PSB', "
        "not by 'MZJ'",
    ),
    (
        "endpoint without port",
        lambda s, c: s.register_data_source(
            dataclasses.replace(psb_source(), id="x", endpoints=("localhost",))
        ),
        grpc.StatusCode.INVALID_ARGUMENT,
        "data_source.endpoints[0]: 'localhost' is not host:port",
    ),
    (
        "endpoint port out of range",
        lambda s, c: s.register_data_source(
            dataclasses.replace(psb_source(), id="x", endpoints=("127.0.0.1:70000",))
        ),
        grpc.StatusCode.INVALID_ARGUMENT,
        "data_source.endpoints[0]: '127.0.0.1:70000' has no port between 1 and 65535",
    ),
    (
        "endpoint with a malformed host",
        lambda s, c: s.register_data_source(
            dataclasses.replace(psb_source(), id="x", endpoints=("127.0.0.1:7001", "a b:80"))
        ),
        grpc.StatusCode.INVALID_ARGUMENT,
        "data_source.endpoints[1]: 'a b' is not a host name or IPv4 address",
    ),
    (
        "source without endpoints",
        lambda s, c: s.register_data_source(
            dataclasses.replace(psb_source(), id="x", endpoints=())
        ),
        grpc.StatusCode.INVALID_ARGUMENT,
        "data_source.endpoints: at least one host:port is required",
    ),
    (
        "source without TLS identity",
        lambda s, c: s.register_data_source(
            dataclasses.replace(psb_source(), id="x", tls_identity="")
        ),
        grpc.StatusCode.INVALID_ARGUMENT,
        "data_source.tls_identity: required",
    ),
    (
        "source with a TLS identity too long to store",  # a DNS name may have 253
        lambda s, c: s.register_data_source(
            dataclasses.replace(psb_source(), id="x", tls_identity=".".join(["a" * 60] * 4))
        ),
        grpc.StatusCode.INVALID_ARGUMENT,
        "data_source.tls_identity: longer than 200 characters",
    ),
    # Grants.
    (
        "grant of a field the type lacks",
        lambda s, c: s.register_grant(
            dataclasses.replace(allowance_grant(), fields=("name", "eye_colour"))
        ),
        grpc.StatusCode.INVALID_ARGUMENT,
        "grant.fields: 'eye_colour' is not a field of certificate type 'resident_identity'",
    ),
    (
        "grant without purposes",
        lambda s, c: s.register_grant(dataclasses.replace(allowance_grant(), purposes=())),
        grpc.StatusCode.INVALID_ARGUMENT,
        "grant.purposes: at least one purpose is required",
    ),
    (
        "grant with an empty purpose",
        lambda s, c: s.register_grant(dataclasses.replace(allowance_grant(), purposes=("",))),
        grpc.StatusCode.INVALID_ARGUMENT,
        "grant.purposes[0]: required",
    ),
    (
        # A lookup's purpose is at most 64 characters: a longer one could never be asked for.
        "grant with a purpose longer than a lookup may carry",
        lambda s, c: s.register_grant(dataclasses.replace(allowance_grant(), purposes=("p" * 65,))),
        grpc.StatusCode.INVALID_ARGUMENT,
        "grant.purposes[0]: longer than 64 characters",
    ),
    (
        "grant without fields",
        lambda s, c: s.register_grant(dataclasses.replace(allowance_grant(), fields=())),
        grpc.StatusCode.INVALID_ARGUMENT,
        "grant.fields: at least one field is required",
    ),
    (
        "grant ending before it starts",
        lambda s, c: s.register_grant(
            dataclasses.replace(allowance_grant(), valid_from=JAN_2030, valid_until=JAN_2025)
        ),
        grpc.StatusCode.INVALID_ARGUMENT,
        "grant.valid_until: 2025-01-01T00:00:00+00:00 is not after valid_from",
    ),
    (
        "grant to an unknown department",
        lambda s, c: s.register_grant(
            dataclasses.replace(allowance_grant(), requesting_department="NOPE")
        ),
        grpc.StatusCode.INVALID_ARGUMENT,
        "grant.requesting_department: unknown department 'NOPE'",
    ),
    (
        "grant of an unknown type",
        lambda s, c: s.register_grant(
            dataclasses.replace(allowance_grant(), certificate_type="marriage")
        ),
        grpc.StatusCode.INVALID_ARGUMENT,
        "grant.certificate_type: unknown certificate type 'marriage'",
    ),
    (
        "update of a grant without id",
        lambda s, c: s.update_grant(dataclasses.replace(c.grant, id="")),
        grpc.StatusCode.INVALID_ARGUMENT,
        "grant.id: required",
    ),
]


@pytest.mark.parametrize(
    ("change", "status", "message"),
    [pytest.param(change, status, message, id=name) for name, change, status, message in REFUSALS],
)
def test_refused_change_names_the_problem_and_changes_nothing(
    store: RegistryStore,
    engine: sa.Engine,
    change: Change,
    status: grpc.StatusCode,
    message: str,
) -> None:
    catalogue = seed(store)
    version = version_of(engine)
    everything = _everything(store)

    with pytest.raises(ExchangeError) as refused:
        change(store, catalogue)

    expected = message.replace("<id>", catalogue.grant.id).replace(
        "<key>", catalogue.psb.signing_keys[0].key_id
    )
    assert refused.value.status == status
    assert refused.value.message.startswith(expected), refused.value.message
    assert version_of(engine) == version
    assert _everything(store) == everything


def _everything(store: RegistryStore) -> tuple[object, ...]:
    return (
        store.list_departments(),
        store.list_certificate_types(),
        store.list_data_sources(),
        store.list_grants(),
    )


# --- versions and snapshots ------------------------------------------------------------------


def test_every_change_bumps_the_version(store: RegistryStore, engine: sa.Engine) -> None:
    catalogue = seed(store)
    assert version_of(engine) == 5
    store.update_grant(dataclasses.replace(catalogue.grant, purposes=("housing_subsidy",)))
    assert version_of(engine) == 6


async def test_snapshot_indexes_the_catalogue(store: RegistryStore) -> None:
    catalogue = seed(store)
    store.register_data_source(dataclasses.replace(psb_source(), id="psb-old", enabled=False))

    snapshot = await store.snapshot()

    key = catalogue.psb.signing_keys[0]
    assert snapshot.version == 6
    assert snapshot.department("PSB") == catalogue.psb
    assert snapshot.department("NOPE") is None
    assert snapshot.certificate_type("resident_identity") == catalogue.resident_identity
    assert snapshot.certificate_type("marriage") is None
    assert snapshot.grants_for("MZJ", "resident_identity") == [catalogue.grant]
    assert snapshot.grants_for("PSB", "resident_identity") == []
    assert snapshot.data_sources_for("resident_identity") == [catalogue.psb_source]
    assert snapshot.signing_key("PSB", key.key_id) == key
    assert snapshot.signing_key("MZJ", key.key_id) is None


async def test_snapshot_is_reused_until_the_version_changes(store: RegistryStore) -> None:
    seed(store)
    first = await store.snapshot()
    assert await store.snapshot() is first

    store.register_department(dataclasses.replace(civil_affairs(), code="RSJ", name="人社局"))
    second = await store.snapshot()

    assert second is not first
    assert second.version == first.version + 1
    assert second.department("RSJ") is not None


async def test_a_second_hub_sees_a_change_on_its_next_snapshot(
    database_url: str, store: RegistryStore
) -> None:
    catalogue = seed(store)
    other_engine = make_engine(database_url)
    other_hub = RegistryStore(other_engine)
    try:
        before = await other_hub.snapshot()
        assert before.grants_for("MZJ", "resident_identity") == [catalogue.grant]

        store.update_grant(dataclasses.replace(catalogue.grant, fields=("name",)))
        store.update_data_source(dataclasses.replace(catalogue.psb_source, enabled=False))

        after = await other_hub.snapshot()
        assert after.grants_for("MZJ", "resident_identity")[0].fields == ("name",)
        assert after.data_sources_for("resident_identity") == []
    finally:
        other_engine.dispose()


@pytest.mark.postgres
@pytest.mark.parametrize("time_zone", ["Asia/Shanghai", "America/New_York"])
async def test_the_ends_of_time_read_back_whatever_the_servers_time_zone(
    postgres_url: str, time_zone: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # "No end" written as 9999-12-31 is in the year 10000 east of UTC, and 0001-01-01 before
    # year 1 west of it: a session in the server's zone could not read the grant back, and
    # every snapshot (so every lookup, whoever asked) failed.
    monkeypatch.setenv("PGTZ", time_zone)  # the session zone a server or role would set
    engine = make_engine(postgres_url)
    upgrade(engine)
    store = RegistryStore(engine)
    try:
        catalogue = seed(store)
        forever = dataclasses.replace(
            catalogue.grant,
            id="forever",
            valid_from=datetime(1, 1, 1, tzinfo=UTC),
            valid_until=datetime(9999, 12, 31, 23, 59, 59, tzinfo=UTC),
        )
        store.register_grant(forever)

        snapshot = await store.snapshot()
        assert forever in snapshot.grants_for("MZJ", "resident_identity")
        assert forever in store.list_grants("MZJ")
    finally:
        await store.aclose()
        engine.dispose()


@pytest.mark.postgres
async def test_libpq_options_in_the_url_reach_every_connection(postgres_url: str) -> None:
    # libpq's documented form, "-c name=value" with a space, and two of them: the registry's
    # version reader connects with the same options as the engine.
    url = postgres_url.replace("options=-csearch_path", "options=-c%20search_path")
    url += "%20-c%20statement_timeout%3D5000"
    engine = make_engine(url)
    upgrade(engine)
    store = RegistryStore(engine)
    try:
        seed(store)
        snapshot = await store.snapshot()
        assert snapshot.department("PSB") is not None
    finally:
        await store.aclose()
        engine.dispose()


async def test_concurrent_registrations_of_one_code_let_exactly_one_win(
    database_url: str, store: RegistryStore
) -> None:
    engines = [make_engine(database_url) for _ in range(4)]
    stores = [RegistryStore(engine) for engine in engines]
    department = civil_affairs()

    def register(hub: RegistryStore) -> str:
        try:
            hub.register_department(department)
        except ExchangeError as error:
            return error.status.name
        return "OK"

    try:
        outcomes = await asyncio.gather(*(asyncio.to_thread(register, hub) for hub in stores))
    finally:
        for engine in engines:
            engine.dispose()

    assert sorted(outcomes) == ["ALREADY_EXISTS"] * 3 + ["OK"]
    assert store.list_departments() == [department]
