"""Issuer signing-key rotation through RegistryService: the department registers its new key next
to the old one, replicas switch over one by one and every lookup keeps verifying; once the old
key's window ends, a document still signed with it is withheld.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import grpc.aio
import pytest
from hub_world import RESIDENT_FIELDS, RESIDENTS_CSV, lookup_request
from pki_fixture import TestPki
from trust.hostile_world import Hostile, audited_grant, audited_refusal, hostile_world, start_node

from exchange.pki import load_public_key_raw
from exchange.v1 import registry_pb2


@pytest.fixture
async def hostile(tmp_path: Path, pki: TestPki) -> AsyncIterator[Hostile]:
    async with hostile_world(tmp_path, pki) as running:
        yield running


def _residents(directory: Path) -> dict[str, object]:
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / "residents.csv"
    path.write_text(RESIDENTS_CSV, encoding="utf-8")
    return {
        "kind": "files",
        "certificate_types": {
            "resident_identity": {
                "path": str(path),
                "subject_key": "id_number",
                "document_id_key": "certificate_no",
                "issued_at_key": "issued",
                "valid_until_key": "expires",
                "timezone": "Asia/Shanghai",
                "fields": {name: name for name in RESIDENT_FIELDS},
            }
        },
    }


async def _psb(hostile: Hostile) -> registry_pb2.Department:
    listing = await hostile.world.registry().ListDepartments(registry_pb2.ListDepartmentsRequest())
    (psb,) = [d for d in listing.departments if d.code == "PSB"]
    return psb


async def test_a_key_rotation_never_interrupts_lookups(hostile: Hostile) -> None:
    world, pki = hostile.world, hostile.pki
    old_node = world.nodes["psb-a"].endpoint
    now = dt.datetime.now(dt.UTC)

    # 1. The new key joins the old one in the registry.
    psb = await _psb(hostile)
    old_key_id = psb.signing_keys[0].key_id
    new_key = registry_pb2.SigningKey(
        public_key=load_public_key_raw(pki.signing_key("psb-2026").public), algorithm="Ed25519"
    )
    new_key.not_before.FromDatetime(now - dt.timedelta(minutes=1))
    psb.signing_keys.append(new_key)
    psb = await world.registry().UpdateDepartment(psb)
    new_key_id = psb.signing_keys[1].key_id

    # 2. A replica signing with the new key comes up next to one still using the old key.
    new = await start_node(
        hostile.directory / "psb-2026", pki, "PSB", "psb-2026", _residents(hostile.directory)
    )
    world.nodes["psb-2026"] = new
    for order, signer in (([old_node, new.endpoint], old_key_id), ([new.endpoint], new_key_id)):
        await world.set_endpoints("psb-population", order)
        answer = await world.lookup().Lookup(lookup_request())
        assert answer.document.key_id == signer  # each verified against its own key

    # 3. The old key retires; a replica that missed the switch no longer gets documents out.
    psb.signing_keys[0].not_after.FromDatetime(dt.datetime.now(dt.UTC))
    await world.registry().UpdateDepartment(psb)
    await audited_grant(world, world.lookup().Lookup(lookup_request()))
    await world.set_endpoints("psb-population", [old_node])
    error, entry = await audited_refusal(
        world, world.lookup().Lookup(lookup_request()), grpc.StatusCode.DATA_LOSS
    )
    assert "was not valid when the document was signed" in error.details()
    assert entry.reason.startswith("integrity: ")
