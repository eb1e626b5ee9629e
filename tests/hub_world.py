"""A small exchange for hub tests: departments, data files, adapter nodes, a hub, and clients.

PSB (public security) issues `resident_identity` from a CSV file through two adapter replicas;
AMR (market regulation) issues `business_licence` from a CSV file through one node. MCA (civil
affairs) holds grants on both; HRSS (social security) is registered but holds none. NHC's
`birth_medical_certificate` is CONDITIONAL, PSB's `criminal_record` is NOT_SHARED.
Everything is registered through RegistryService as the admin, as an operator would.
"""

from __future__ import annotations

import contextlib
import datetime as dt
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import grpc.aio
from pki_fixture import TestPki

from adapters.config import AdapterConfig
from adapters.node import build_adapter_server
from audit.config import create_keys
from exchange.config import HubConfig
from exchange.hub.server import Hub, build_hub
from exchange.pki import load_public_key_raw
from exchange.subject import make_resident_id, make_uscc
from exchange.tls import TlsFiles, channel_credentials
from exchange.v1 import (
    audit_pb2,
    audit_pb2_grpc,
    common_pb2,
    lookup_pb2,
    lookup_pb2_grpc,
    registry_pb2,
    registry_pb2_grpc,
)

ZHANG = make_resident_id("110101", dt.date(1990, 5, 17), 123)
LI = make_resident_id("310104", dt.date(1985, 11, 2), 456)
NOBODY = make_resident_id("440305", dt.date(2001, 1, 9), 789)  # valid, but no record anywhere
ACME = make_uscc(region="110105", organisation="MA01ABCD3")

RESIDENT_FIELDS = ("name", "birth_date", "address", "ethnicity")
GRANTED_RESIDENT_FIELDS = ("name", "birth_date", "address")
LICENCE_FIELDS = ("company_name", "legal_representative", "registered_capital")
BIRTH_REGISTRATION = "birth_registration"

RESIDENTS_CSV = f"""id_number,certificate_no,issued,expires,name,birth_date,address,ethnicity
{ZHANG},PSB-2019-0001,2019-03-01,2039-03-01,张伟,1990-05-17,北京市东城区景山前街4号,汉
{LI},PSB-2015-0042,2015-07-20,,李娜,1985-11-02,上海市徐汇区漕溪北路88号,回
"""
LICENCES_CSV = f"""uscc,licence_no,issued,company_name,legal_rep,capital
{ACME},AMR-2020-77,2020-01-15,北京示例科技有限公司,王强,1000000
"""


def resident(subject_id: str = ZHANG) -> common_pb2.Subject:
    """A resident subject."""
    return common_pb2.Subject(kind=common_pb2.RESIDENT_ID, id=subject_id)


def lookup_request(**overrides: Any) -> lookup_pb2.LookupRequest:
    """A lookup MCA is entitled to, with any field overridden."""
    values: dict[str, Any] = {
        "certificate_type": "resident_identity",
        "subject": resident(),
        "fields": ["name", "birth_date"],
        "purpose": BIRTH_REGISTRATION,
        "matter_id": "MCA-2024-0001",
        "operator_id": "clerk-7",
    }
    values.update(overrides)
    return lookup_pb2.LookupRequest(**values)


@dataclass
class Node:
    """A running adapter node."""

    server: Any
    port: int

    @property
    def endpoint(self) -> str:
        return f"127.0.0.1:{self.port}"


@dataclass
class HubWorld:
    """A running hub with its adapter nodes, and a way to call it as anyone."""

    hub: Hub
    config: HubConfig
    pki: TestPki
    nodes: dict[str, Node]
    _channels: list[grpc.aio.Channel] = field(default_factory=list)

    @property
    def endpoint(self) -> str:
        return f"127.0.0.1:{self.hub.port}"

    def channel(self, tls: TlsFiles, port: int | None = None) -> grpc.aio.Channel:
        """A channel to the hub (or `port`) presenting `tls`; closed with the world."""
        channel = grpc.aio.secure_channel(
            f"127.0.0.1:{port or self.hub.port}", channel_credentials(tls)
        )
        self._channels.append(channel)
        return channel

    def lookup(
        self, tls: TlsFiles | None = None, port: int | None = None
    ) -> lookup_pb2_grpc.LookupServiceStub:
        """LookupService as MCA's case system (or `tls`), at this hub (or `port`)."""
        return lookup_pb2_grpc.LookupServiceStub(self.channel(tls or self.mca, port))

    def registry(
        self, tls: TlsFiles | None = None, port: int | None = None
    ) -> registry_pb2_grpc.RegistryServiceStub:
        """RegistryService as the admin (or `tls`), at this hub (or `port`)."""
        return registry_pb2_grpc.RegistryServiceStub(self.channel(tls or self.admin, port))

    def audit(
        self, tls: TlsFiles | None = None, port: int | None = None
    ) -> audit_pb2_grpc.AuditServiceStub:
        """AuditService as the auditor (or `tls`), at this hub (or `port`)."""
        return audit_pb2_grpc.AuditServiceStub(self.channel(tls or self.auditor, port))

    @property
    def mca(self) -> TlsFiles:
        return self.pki.identity("mca-case-system", "department", "MCA")

    @property
    def hrss(self) -> TlsFiles:
        return self.pki.identity("hrss-counter", "department", "HRSS")

    @property
    def admin(self) -> TlsFiles:
        return self.pki.identity("exchange-admin", "admin", "EXCHANGE")

    @property
    def auditor(self) -> TlsFiles:
        return self.pki.identity("inspector", "auditor", "EXCHANGE")

    async def audit_entries(self, **query: Any) -> list[audit_pb2.AuditEntry]:
        """Audit entries matching `query` (QueryAccessLogRequest fields), oldest first."""
        response = await self.audit().QueryAccessLog(
            audit_pb2.QueryAccessLogRequest(page_size=1000, **query)
        )
        return sorted(response.entries, key=lambda e: e.index)

    async def last_entry(self, **query: Any) -> audit_pb2.AuditEntry:
        """The newest audit entry matching `query`."""
        entries = await self.audit_entries(**query)
        assert entries, f"no audit entry matches {query}"
        return entries[-1]

    async def set_endpoints(self, source_id: str, endpoints: Sequence[str], **changes: Any) -> None:
        """Point a data source at other replicas (and change anything else), as the admin."""
        sources = await self.registry().ListDataSources(registry_pb2.ListDataSourcesRequest())
        (source,) = [s for s in sources.data_sources if s.id == source_id]
        del source.endpoints[:]
        source.endpoints.extend(endpoints)
        for name, value in changes.items():
            setattr(source, name, value)
        await self.registry().UpdateDataSource(source)

    async def close(self) -> None:
        for channel in self._channels:
            await channel.close()
        for node in self.nodes.values():
            await node.server.stop(None)
        await self.hub.stop(None)


def write_hub_config(directory: Path, pki: TestPki, database: str | None = None) -> Path:
    """A hub config file in `directory` (audit keys created next to it)."""
    directory.mkdir(parents=True, exist_ok=True)
    keys = directory / "keys"
    if not (keys / "audit-log.secrets").exists():
        create_keys(keys)
    tls = pki.identity("hub", "hub", "EXCHANGE")
    database_line = f'database = "{database}"\n' if database else ""
    path = directory / "hub.toml"
    path.write_text(
        f"""listen = "127.0.0.1:0"
{database_line}
[tls]
ca = "{tls.ca}"
cert = "{tls.cert}"
key = "{tls.key}"

[audit]
log_key = "keys/audit-log.sign.key"
secrets = "keys/audit-log.secrets"
checkpoint_interval_seconds = 1

[lookup]
adapter_timeout_seconds = 3
default_deadline_seconds = 10
""",
        encoding="utf-8",
    )
    return path


async def start_node(
    directory: Path, pki: TestPki, department: str, node_name: str, backend: str
) -> Node:
    """An adapter node of `department` identified as `node_name`, on a free port."""
    tls = pki.identity(node_name, "adapter", department)
    signing = pki.signing_key(department.lower())
    config = AdapterConfig.from_dict(
        {
            "listen": "127.0.0.1:0",
            "department": department,
            "signing_key": str(signing.private),
            "tls": {"ca": str(tls.ca), "cert": str(tls.cert), "key": str(tls.key)},
            "backend": {"kind": "files"},
            "certificate_types": _backend_types(directory, backend),
        },
        directory,
    )
    server, port = build_adapter_server(config)
    await server.start()
    return Node(server, port)


def _backend_types(directory: Path, backend: str) -> dict[str, Any]:
    directory.mkdir(parents=True, exist_ok=True)
    if backend == "psb":
        path = directory / "residents.csv"
        path.write_text(RESIDENTS_CSV, encoding="utf-8")
        return {
            "resident_identity": {
                "path": str(path),
                "subject_key": "id_number",
                "document_id_key": "certificate_no",
                "issued_at_key": "issued",
                "valid_until_key": "expires",
                "timezone": "Asia/Shanghai",
                "fields": {name: name for name in RESIDENT_FIELDS},
            }
        }
    path = directory / "licences.csv"
    path.write_text(LICENCES_CSV, encoding="utf-8")
    return {
        "business_licence": {
            "path": str(path),
            "subject_key": "uscc",
            "document_id_key": "licence_no",
            "issued_at_key": "issued",
            "fields": {
                "company_name": "company_name",
                "legal_representative": "legal_rep",
                "registered_capital": "capital",
            },
        }
    }


async def register_catalogue(world: HubWorld) -> None:
    """Departments, types, data sources and grants, registered through RegistryService."""
    registry = world.registry()
    for code, name, key in (
        ("PSB", "Public Security Bureau", "psb"),
        ("AMR", "Administration for Market Regulation", "amr"),
        ("NHC", "Health Commission", "nhc"),
        ("MCA", "Civil Affairs Bureau", None),
        ("HRSS", "Human Resources and Social Security Bureau", None),
    ):
        keys = []
        if key is not None:
            raw = load_public_key_raw(world.pki.signing_key(key).public)
            keys.append(registry_pb2.SigningKey(public_key=raw, algorithm="Ed25519"))
        await registry.RegisterDepartment(
            registry_pb2.Department(code=code, name=name, signing_keys=keys)
        )
    for code, issuer, fields, sharing, kind in (
        (
            "resident_identity",
            "PSB",
            RESIDENT_FIELDS,
            common_pb2.UNCONDITIONAL,
            common_pb2.RESIDENT_ID,
        ),
        ("criminal_record", "PSB", ("convictions",), common_pb2.NOT_SHARED, common_pb2.RESIDENT_ID),
        (
            "business_licence",
            "AMR",
            LICENCE_FIELDS,
            common_pb2.UNCONDITIONAL,
            common_pb2.UNIFIED_SOCIAL_CREDIT_CODE,
        ),
        (
            "birth_medical_certificate",
            "NHC",
            ("child_name", "birth_date"),
            common_pb2.CONDITIONAL,
            common_pb2.RESIDENT_ID,
        ),
    ):
        await registry.RegisterCertificateType(
            registry_pb2.CertificateType(
                code=code,
                name=code.replace("_", " "),
                issuing_department=issuer,
                fields=[registry_pb2.FieldSpec(name=f) for f in fields],
                sharing_class=sharing,
                subject_kind=kind,
            )
        )
    await registry.RegisterDataSource(
        registry_pb2.DataSource(
            id="psb-population",
            issuing_department="PSB",
            certificate_types=["resident_identity", "criminal_record"],
            endpoints=[world.nodes["psb-a"].endpoint, world.nodes["psb-b"].endpoint],
            tls_identity="psb-adapter",
            enabled=True,
        )
    )
    await registry.RegisterDataSource(
        registry_pb2.DataSource(
            id="amr-licences",
            issuing_department="AMR",
            certificate_types=["business_licence"],
            endpoints=[world.nodes["amr"].endpoint],
            tls_identity="amr-adapter",
            enabled=True,
        )
    )
    for grant in (
        registry_pb2.Grant(
            id="mca-residents",
            requesting_department="MCA",
            certificate_type="resident_identity",
            fields=GRANTED_RESIDENT_FIELDS,
            purposes=[BIRTH_REGISTRATION, "marriage_registration"],
        ),
        registry_pb2.Grant(
            id="mca-licences",
            requesting_department="MCA",
            certificate_type="business_licence",
            fields=["company_name", "legal_representative"],
            purposes=["charity_registration"],
        ),
        registry_pb2.Grant(
            id="mca-criminal",
            requesting_department="MCA",
            certificate_type="criminal_record",
            fields=["convictions"],
            purposes=["adoption"],
        ),
        registry_pb2.Grant(
            id="mca-birth",
            requesting_department="MCA",
            certificate_type="birth_medical_certificate",
            fields=["child_name", "birth_date"],
            purposes=[BIRTH_REGISTRATION],
        ),
    ):
        await registry.RegisterGrant(grant)


@contextlib.asynccontextmanager
async def running_world(
    directory: Path, pki: TestPki, database: str | None = None
) -> AsyncIterator[HubWorld]:
    """A hub, PSB's two replicas and AMR's node, with the catalogue registered."""
    nodes = {
        "psb-a": await start_node(directory / "psb", pki, "PSB", "psb-adapter", "psb"),
        "psb-b": await start_node(directory / "psb", pki, "PSB", "psb-adapter", "psb"),
        "amr": await start_node(directory / "amr", pki, "AMR", "amr-adapter", "amr"),
    }
    config = HubConfig.from_file(write_hub_config(directory / "hub", pki, database))
    hub = build_hub(config)
    await hub.start()
    world = HubWorld(hub=hub, config=config, pki=pki, nodes=nodes)
    try:
        await register_catalogue(world)
        yield world
    finally:
        await world.close()
