"""The exchange of tests/hub_world.py, plus what the trust checks need to be exercised for real.

Added: NHC's adapter node serving the CONDITIONAL `birth_medical_certificate`; the citizen
portal registered as a consent issuer; Li registered as Zhang's agent (and a revoked and an
expired delegation); department QTA with a quota of one lookup per second. `sql_node` starts
a PSB node reading residents from a SQL database, for the injection cases.

Helpers assert what every hostile case must show: the exact status, and the audit entry the
refusal produced, found through AuditService as the auditor and matched by its receipt.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import tomllib
from collections.abc import AsyncIterator, Awaitable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import grpc.aio
import pytest
from adapter_world import SQL_TYPE, write_database
from hub_world import BIRTH_REGISTRATION, LI, ZHANG, HubWorld, Node, lookup_request, running_world
from pki_fixture import TestPki
from trust.consent_world import Portal

from adapters.config import AdapterConfig
from adapters.node import build_adapter_server
from audit.events import SubjectId
from exchange.consent import issue_consent
from exchange.v1 import audit_pb2, common_pb2, lookup_pb2, registry_pb2

BIRTHS_CSV = f"""mother_id,certificate_no,issued,child_name,birth_date
{ZHANG},NHC-2024-0815,2024-08-15,张小伟,2024-08-15
"""
BIRTH_TYPE = "birth_medical_certificate"
AGENCY = "d-zhang-by-li"
REVOKED_AGENCY = "d-revoked"
LAPSED_AGENCY = "d-lapsed"
INJECTION_PURPOSE = "x'); DROP TABLE residents; --"
RECEIPT_KEY = "exchange-receipt-bin"


@dataclass
class Hostile:
    """The running exchange, the consent portal, and how to reach both as anyone."""

    world: HubWorld
    portal: Portal
    directory: Path
    pki: TestPki
    extra: dict[str, Any] = field(default_factory=dict)

    def consent(self, subject: str = ZHANG, **overrides: Any) -> str:
        """A consent token from the portal: Zhang lets MCA obtain her birth certificate."""
        values: dict[str, Any] = {
            "subject": SubjectId("RESIDENT_ID", subject),
            "requesting_department": "MCA",
            "certificate_types": [BIRTH_TYPE],
            "purposes": [BIRTH_REGISTRATION],
            "ttl": dt.timedelta(minutes=10),
        }
        values.update(overrides)
        return issue_consent(self.portal.key, self.portal.id, self.portal.key_id, **values)

    def birth_request(self, **overrides: Any) -> lookup_pb2.LookupRequest:
        """MCA's lookup of Zhang's birth medical certificate, with a fresh consent."""
        values: dict[str, Any] = {
            "certificate_type": BIRTH_TYPE,
            "fields": ["child_name", "birth_date"],
            "consent_token": self.consent(),
        }
        values.update(overrides)
        return lookup_request(**values)


@contextlib.asynccontextmanager
async def hostile_world(directory: Path, pki: TestPki) -> AsyncIterator[Hostile]:
    """hub_world's exchange with consent, delegations and a quota'd department registered."""
    async with running_world(directory, pki) as world:
        world.nodes["nhc"] = await start_node(
            directory / "nhc", pki, "NHC", "nhc", _births(directory)
        )
        hostile = Hostile(world=world, portal=Portal(), directory=directory, pki=pki)
        await _register(hostile)
        yield hostile


def _births(directory: Path) -> dict[str, Any]:
    (directory / "nhc").mkdir(parents=True, exist_ok=True)
    path = directory / "nhc" / "births.csv"
    path.write_text(BIRTHS_CSV, encoding="utf-8")
    return {
        "kind": "files",
        "certificate_types": {
            BIRTH_TYPE: {
                "path": str(path),
                "subject_key": "mother_id",
                "document_id_key": "certificate_no",
                "issued_at_key": "issued",
                "timezone": "Asia/Shanghai",
                "fields": {"child_name": "child_name", "birth_date": "birth_date"},
            }
        },
    }


async def start_node(
    directory: Path, pki: TestPki, department: str, key: str, backend: dict[str, Any]
) -> Node:
    """An adapter node of `department` identified as `<key>-adapter`, signing with `key`."""
    server, port = build_adapter_server(_node_config(directory, pki, department, key, backend))
    await server.start()
    return Node(server, port)


def _node_config(
    directory: Path, pki: TestPki, department: str, key: str, backend: dict[str, Any]
) -> AdapterConfig:
    directory.mkdir(parents=True, exist_ok=True)
    # The registered tls_identity of PSB's data source is "psb-adapter", whatever key it uses.
    tls = pki.identity(f"{department.lower()}-adapter", "adapter", department)
    options = dict(backend)
    types = options.pop("certificate_types")
    return AdapterConfig.from_dict(
        {
            "listen": "127.0.0.1:0",
            "department": department,
            "signing_key": str(pki.signing_key(key).private),
            "tls": {"ca": str(tls.ca), "cert": str(tls.cert), "key": str(tls.key)},
            "backend": options,
            "certificate_types": types,
        },
        directory,
    )


def _sql_backend(directory: Path) -> tuple[dict[str, Any], str]:
    directory.mkdir(parents=True, exist_ok=True)
    url = f"sqlite:///{directory / 'psb.db'}"
    write_database(url)
    types = tomllib.loads(SQL_TYPE)["certificate_types"]
    return {"kind": "sql", "url": url, "certificate_types": types}, url


async def sql_node(hostile: Hostile) -> tuple[Node, str]:
    """A PSB node reading residents from a SQLite database (started once); its database URL."""
    if "sql" not in hostile.extra:
        backend, url = _sql_backend(hostile.directory / "psb-sql")
        node = await start_node(hostile.directory / "psb-sql", hostile.pki, "PSB", "psb", backend)
        hostile.world.nodes["psb-sql"] = node
        hostile.extra["sql"] = (node, url)
    found: tuple[Node, str] = hostile.extra["sql"]
    return found


async def _register(hostile: Hostile) -> None:
    world = hostile.world
    registry = world.registry()
    await registry.RegisterDataSource(
        registry_pb2.DataSource(
            id="nhc-births",
            issuing_department="NHC",
            certificate_types=[BIRTH_TYPE],
            endpoints=[world.nodes["nhc"].endpoint],
            tls_identity="nhc-adapter",
            enabled=True,
        )
    )
    await registry.RegisterConsentIssuer(hostile.portal.issuer().to_proto())
    zhang = common_pb2.Subject(kind=common_pb2.RESIDENT_ID, id=ZHANG)
    li = common_pb2.Subject(kind=common_pb2.RESIDENT_ID, id=LI)
    for delegation_id, revoked, until in (
        (AGENCY, False, None),
        (REVOKED_AGENCY, True, None),
        (LAPSED_AGENCY, False, dt.datetime(2025, 1, 1, tzinfo=dt.UTC)),
    ):
        delegation = registry_pb2.Delegation(
            id=delegation_id,
            principal=zhang,
            agent=li,
            certificate_types=["resident_identity", BIRTH_TYPE],
            purposes=[BIRTH_REGISTRATION],
            revoked=revoked,
        )
        if until is not None:
            delegation.valid_from.FromDatetime(until - dt.timedelta(days=365))
            delegation.valid_until.FromDatetime(until)
        await registry.RegisterDelegation(delegation)
    await registry.RegisterDepartment(
        registry_pb2.Department(
            code="QTA",
            name="Quota-limited office",
            quota=registry_pb2.Quota(requests_per_second=1, burst=1),
        )
    )
    await registry.RegisterGrant(
        registry_pb2.Grant(
            id="qta-residents",
            requesting_department="QTA",
            certificate_type="resident_identity",
            fields=["name"],
            purposes=[BIRTH_REGISTRATION],
        )
    )
    await registry.RegisterGrant(
        registry_pb2.Grant(
            id="mca-odd-purpose",
            requesting_department="MCA",
            certificate_type="resident_identity",
            fields=["name"],
            purposes=[INJECTION_PURPOSE],
        )
    )


# --- what every case asserts -------------------------------------------------------------------


async def refusal(call: Awaitable[Any]) -> grpc.aio.AioRpcError:
    """The error a call ends with."""
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await call
    return caught.value


async def audited_refusal(
    world: HubWorld, call: Awaitable[Any], code: grpc.StatusCode, event: str = "lookup"
) -> tuple[grpc.aio.AioRpcError, audit_pb2.AuditEntry]:
    """The call fails with exactly `code`, and the audit entry its receipt names records it."""
    error = await refusal(call)
    assert error.code() == code, (error.code(), error.details())
    metadata = dict(error.trailing_metadata() or ())
    assert RECEIPT_KEY in metadata, f"no audit receipt with {error.code().name}"
    receipt = lookup_pb2.Receipt.FromString(metadata[RECEIPT_KEY])
    entries = await world.audit_entries(event=event)
    (entry,) = [e for e in entries if e.index == receipt.entry_index]
    assert entry.status == code.name
    assert entry.outcome in (audit_pb2.REFUSED, audit_pb2.FAILED)
    # Integrity failures are filed as such; every other reason is what the caller heard.
    assert entry.reason in (error.details(), f"integrity: {error.details()}")
    return error, entry


async def audited_grant(
    world: HubWorld, response: Awaitable[lookup_pb2.LookupResponse]
) -> tuple[common_pb2.Document, audit_pb2.AuditEntry]:
    """The lookup succeeds; its document, and the audit entry its receipt names."""
    answer = await response
    entries = await world.audit_entries(event="lookup")
    (entry,) = [e for e in entries if e.index == answer.receipt.entry_index]
    assert (entry.status, entry.outcome) == ("OK", audit_pb2.GRANTED)
    return common_pb2.Document.FromString(answer.document.payload), entry
