"""Registry changes take effect on the very next call, on this hub and on every other hub
sharing the database, without a restart.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import grpc
import grpc.aio
import pytest
from audit_world import inserts_refused
from hub_world import HubWorld, lookup_request, running_world, write_hub_config
from pki_fixture import TestPki

from exchange.config import HubConfig
from exchange.db import make_engine
from exchange.hub.server import build_hub
from exchange.registry.model import Grant
from exchange.registry.store import RegistryStore
from exchange.v1 import audit_pb2, common_pb2, lookup_pb2_grpc, registry_pb2

HRSS_GRANT = registry_pb2.Grant(
    id="hrss-residents",
    requesting_department="HRSS",
    certificate_type="resident_identity",
    fields=["name"],
    purposes=["pension_claim"],
)


async def status_of(stub: lookup_pb2_grpc.LookupServiceStub, **overrides: object) -> str:
    """The status name a lookup ends with ("OK" when a document came back)."""
    try:
        await stub.Lookup(lookup_request(**overrides))
    except grpc.aio.AioRpcError as error:
        return str(error.code().name)
    return "OK"


async def test_a_new_grant_counts_on_the_next_call(world: HubWorld) -> None:
    hrss = world.lookup(world.hrss)
    assert await status_of(hrss, purpose="pension_claim") == "PERMISSION_DENIED"

    await world.registry().RegisterGrant(HRSS_GRANT)

    response = await hrss.Lookup(lookup_request(purpose="pension_claim", fields=[]))
    document = common_pb2.Document.FromString(response.document.payload)
    assert dict(document.fields) == {"name": "张伟"}


async def test_a_change_the_audit_log_cannot_record_is_not_made(world: HubWorld) -> None:
    hrss = world.lookup(world.hrss)
    admin = world.registry()
    engine = make_engine(world.config.database)
    try:
        with (
            inserts_refused(engine, "audit_entries"),
            pytest.raises(grpc.aio.AioRpcError) as failed,
        ):
            await admin.RegisterGrant(HRSS_GRANT)
    finally:
        engine.dispose()

    assert failed.value.code() == grpc.StatusCode.UNAVAILABLE
    # Not in force, not listed, and not half made: the administrator's retry registers it.
    assert await status_of(hrss, purpose="pension_claim", fields=[]) == "PERMISSION_DENIED"
    listed = await admin.ListGrants(registry_pb2.ListGrantsRequest(requesting_department="HRSS"))
    assert list(listed.grants) == []
    assert "neither made nor recorded" in str(failed.value.details())
    await admin.RegisterGrant(HRSS_GRANT)
    assert await status_of(hrss, purpose="pension_claim", fields=[]) == "OK"
    changes = await world.audit_entries(event="registry_change", requester_department="EXCHANGE")
    grant_changes = [e for e in changes if HRSS_GRANT.id in e.change_after]
    assert [(e.status, json.loads(e.change_after)["id"]) for e in grant_changes] == [
        ("OK", HRSS_GRANT.id)
    ]


async def test_a_change_the_database_fails_is_audited_as_failed_not_blamed_on_the_log(
    world: HubWorld,
) -> None:
    engine = make_engine(world.config.database)
    try:
        with inserts_refused(engine, "grants"), pytest.raises(grpc.aio.AioRpcError) as failed:
            await world.registry().RegisterGrant(HRSS_GRANT)
    finally:
        engine.dispose()

    assert failed.value.code() == grpc.StatusCode.INTERNAL
    entry = await world.last_entry(event="registry_change")
    assert (entry.outcome, entry.status) == (audit_pb2.FAILED, "INTERNAL")
    assert json.loads(entry.change_after)["id"] == HRSS_GRANT.id
    assert "audit log" not in entry.reason
    assert await status_of(world.lookup(world.hrss), purpose="pension_claim") == (
        "PERMISSION_DENIED"
    )


async def test_a_disabled_data_source_counts_on_the_next_call(world: HubWorld) -> None:
    mca = world.lookup()
    assert await status_of(mca) == "OK"

    nodes = world.nodes
    endpoints = [nodes["psb-a"].endpoint, nodes["psb-b"].endpoint]
    await world.set_endpoints("psb-population", endpoints, enabled=False)
    assert await status_of(mca) == "UNAVAILABLE"

    await world.set_endpoints("psb-population", endpoints, enabled=True)
    assert await status_of(mca) == "OK"


async def test_a_change_made_elsewhere_counts_on_the_next_call(world: HubWorld) -> None:
    # Another process (another hub replica, a migration script) writes the same database.
    engine = make_engine(world.config.database)
    try:
        other = RegistryStore(engine)
        hrss = world.lookup(world.hrss)
        assert await status_of(hrss, purpose="pension_claim") == "PERMISSION_DENIED"

        other.register_grant(Grant.from_proto(HRSS_GRANT))
        assert await status_of(hrss, purpose="pension_claim", fields=[]) == "OK"

        (source,) = [s for s in other.list_data_sources() if s.id == "psb-population"]
        other.update_data_source(dataclasses.replace(source, enabled=False))
        assert await status_of(hrss, purpose="pension_claim", fields=[]) == "UNAVAILABLE"
    finally:
        engine.dispose()


@pytest.mark.parametrize(
    "backend", ["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)]
)
async def test_two_hubs_on_one_database_see_each_others_changes(
    tmp_path: Path, pki: TestPki, backend: str, request: pytest.FixtureRequest
) -> None:
    database = request.getfixturevalue("postgres_url") if backend == "postgresql" else None
    async with running_world(tmp_path, pki, database) as world:
        config = HubConfig.from_file(write_hub_config(tmp_path / "hub", pki, database))
        assert config.database == world.config.database
        second = build_hub(config)
        await second.start()
        try:
            via_first = world.lookup(world.hrss)
            via_second = world.lookup(world.hrss, port=second.port)
            assert await status_of(via_second, purpose="pension_claim") == "PERMISSION_DENIED"

            await world.registry().RegisterGrant(HRSS_GRANT)  # through the first hub
            assert await status_of(via_second, purpose="pension_claim", fields=[]) == "OK"

            admin_of_second = world.registry(port=second.port)
            sources = await admin_of_second.ListDataSources(registry_pb2.ListDataSourcesRequest())
            (source,) = [s for s in sources.data_sources if s.id == "psb-population"]
            source.enabled = False
            await admin_of_second.UpdateDataSource(source)  # through the second hub
            assert await status_of(via_first, purpose="pension_claim", fields=[]) == "UNAVAILABLE"

            # Both hubs appended to one log, each entry under an index of its own.
            entries = await world.audit_entries(event="lookup", requester_department="HRSS")
            assert [e.status for e in entries] == ["PERMISSION_DENIED", "OK", "UNAVAILABLE"]
            assert len({e.index for e in entries}) == 3
        finally:
            await second.stop(None)
