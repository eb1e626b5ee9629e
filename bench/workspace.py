"""The benchmark's working directory: a local CA and identities, the issuer's records in a
SQLite file, and the config files `exchange serve` and `exchange adapter serve` run from.

One issuing department (PSB) serves `resident_identity` from a SQL backend; one requesting
department (MCA) holds a grant for three of its fields. Registration happens later, through
RegistryService as the administrator (`register_catalogue`), as an operator would do it.
"""

from __future__ import annotations

import datetime as dt
import json
import socket
import sqlite3
from dataclasses import dataclass
from pathlib import Path

import grpc.aio

from audit.config import create_keys
from exchange.pki import generate_signing_key, init_ca, issue_identity, load_public_key_raw
from exchange.subject import make_resident_id
from exchange.tls import TlsFiles, channel_credentials
from exchange.v1 import common_pb2, lookup_pb2, registry_pb2, registry_pb2_grpc

ISSUER = "PSB"
REQUESTER = "MCA"
CERTIFICATE_TYPE = "resident_identity"
PURPOSE = "birth_registration"
ADAPTER_NAME = "psb-node"
# Record fields -> table columns; the grant releases the first three.
FIELDS = {"name": "full_name", "birth_date": "birth_date", "address": "address", "sex": "sex"}
GRANTED = ("name", "birth_date", "address")


@dataclass(frozen=True)
class Workspace:
    """Everything the real path runs from; paths are absolute."""

    root: Path
    hub_config: Path
    hub_address: str
    adapter_config: Path
    adapter_address: str
    requester: TlsFiles
    admin: TlsFiles
    auditor: TlsFiles
    issuer_public_key: bytes
    audit_public_key: Path
    subjects: tuple[str, ...]


def free_port() -> int:
    """A loopback port nothing listens on now."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def create_workspace(root: Path, database_url: str, subjects: int = 1000) -> Workspace:
    """Write the PKI, keys, records and configs into `root` (which must be empty or new)."""
    root.mkdir(parents=True, exist_ok=True)
    pki = root / "pki"
    init_ca(pki)
    issue_identity(pki, pki, "hub", "hub", "EXCHANGE")
    issue_identity(pki, pki, ADAPTER_NAME, "adapter", ISSUER)
    signing = generate_signing_key(root / "keys", ISSUER.lower())
    audit = create_keys(root / "keys" / "audit")
    people = tuple(
        make_resident_id("110101", dt.date(1960, 1, 1) + dt.timedelta(days=n * 13), n % 999 + 1)
        for n in range(subjects)
    )
    write_records(root / "psb.db", people)
    hub_address = f"127.0.0.1:{free_port()}"
    adapter_address = f"127.0.0.1:{free_port()}"
    (root / "hub.toml").write_text(
        hub_toml(hub_address, database_url, audit.log_key, audit.secrets), "utf-8"
    )
    (root / "psb-node.toml").write_text(adapter_toml(adapter_address, signing.private), "utf-8")
    return Workspace(
        root=root,
        hub_config=root / "hub.toml",
        hub_address=hub_address,
        adapter_config=root / "psb-node.toml",
        adapter_address=adapter_address,
        requester=issue_identity(pki, pki, "mca-case-system", "department", REQUESTER),
        admin=issue_identity(pki, pki, "admin", "admin", "EXCHANGE"),
        auditor=issue_identity(pki, pki, "auditor", "auditor", "EXCHANGE"),
        issuer_public_key=load_public_key_raw(signing.public),
        audit_public_key=audit.public_key,
        subjects=people,
    )


def write_records(path: Path, people: tuple[str, ...]) -> None:
    """The issuer's resident identity records, one per subject, in a SQLite file."""
    with sqlite3.connect(path) as db:
        db.execute(
            "CREATE TABLE residents (id_number TEXT PRIMARY KEY, card_number TEXT,"
            " full_name TEXT, sex TEXT, birth_date TEXT, address TEXT, issued_on TEXT,"
            " valid_until TEXT)"
        )
        db.executemany(
            "INSERT INTO residents VALUES (?,?,?,?,?,?,?,?)",
            [
                (
                    person,
                    f"C{person[-8:]}",
                    f"居民{number:05d}",
                    "女" if number % 2 else "男",
                    f"{person[6:10]}-{person[10:12]}-{person[12:14]}",
                    f"北京市东城区景山前街{number % 200 + 1}号",
                    "2016-03-01",
                    "2036-03-01",
                )
                for number, person in enumerate(people)
            ],
        )
    db.close()


def _toml(value: object) -> str:
    return json.dumps(value, ensure_ascii=False)


def hub_toml(address: str, database_url: str, log_key: Path, secrets: Path) -> str:
    """The hub's config: mTLS, the registry and audit log in `database_url`."""
    return "\n".join(
        [
            f"listen = {_toml(address)}",
            f"database = {_toml(database_url)}",
            "",
            "[tls]",
            'ca = "pki/ca.pem"',
            'cert = "pki/hub.pem"',
            'key = "pki/hub.key"',
            "",
            "[audit]",
            f"log_key = {_toml(str(log_key))}",
            f"secrets = {_toml(str(secrets))}",
            "",
        ]
    )


def adapter_toml(address: str, signing_key: Path) -> str:
    """The issuer's adapter node config: SQL backend on the records file."""
    mapping = ", ".join(f"{name} = {_toml(column)}" for name, column in FIELDS.items())
    return "\n".join(
        [
            f"listen = {_toml(address)}",
            f"department = {_toml(ISSUER)}",
            f"signing_key = {_toml(str(signing_key))}",
            "",
            "[tls]",
            'ca = "pki/ca.pem"',
            f'cert = "pki/{ADAPTER_NAME}.pem"',
            f'key = "pki/{ADAPTER_NAME}.key"',
            "",
            "[backend]",
            'kind = "sql"',
            'url = "sqlite:///psb.db"',
            "",
            f"[certificate_types.{CERTIFICATE_TYPE}]",
            'table = "residents"',
            'subject_column = "id_number"',
            'document_id_column = "card_number"',
            'issued_at_column = "issued_on"',
            'valid_until_column = "valid_until"',
            'timezone = "Asia/Shanghai"',
            f"fields = {{ {mapping} }}",
            "",
        ]
    )


async def register_catalogue(workspace: Workspace, hub_address: str | None = None) -> None:
    """Register both departments, the type, the data source and the grant, as the admin."""
    target = hub_address or workspace.hub_address
    credentials = channel_credentials(workspace.admin)
    async with grpc.aio.secure_channel(target, credentials) as channel:
        registry = registry_pb2_grpc.RegistryServiceStub(channel)
        key = registry_pb2.SigningKey(public_key=workspace.issuer_public_key, algorithm="Ed25519")
        await registry.RegisterDepartment(
            registry_pb2.Department(code=ISSUER, name="public security", signing_keys=[key])
        )
        await registry.RegisterDepartment(
            registry_pb2.Department(code=REQUESTER, name="civil affairs")
        )
        await registry.RegisterCertificateType(
            registry_pb2.CertificateType(
                code=CERTIFICATE_TYPE,
                name="resident identity card",
                issuing_department=ISSUER,
                fields=[registry_pb2.FieldSpec(name=name, description=name) for name in FIELDS],
                sharing_class=common_pb2.UNCONDITIONAL,
                subject_kind=common_pb2.RESIDENT_ID,
            )
        )
        await registry.RegisterDataSource(data_source(workspace, enabled=True))
        await registry.RegisterGrant(
            registry_pb2.Grant(
                requesting_department=REQUESTER,
                certificate_type=CERTIFICATE_TYPE,
                fields=GRANTED,
                purposes=[PURPOSE],
            )
        )


def data_source(workspace: Workspace, *, enabled: bool) -> registry_pb2.DataSource:
    """The issuer's one data source: its adapter node."""
    return registry_pb2.DataSource(
        id="psb-records",
        issuing_department=ISSUER,
        certificate_types=[CERTIFICATE_TYPE],
        endpoints=[workspace.adapter_address],
        tls_identity=ADAPTER_NAME,
        enabled=enabled,
    )


def lookup_requests(subjects: tuple[str, ...]) -> list[lookup_pb2.LookupRequest]:
    """One granted lookup per subject, as MCA's case system sends them."""
    return [
        lookup_pb2.LookupRequest(
            certificate_type=CERTIFICATE_TYPE,
            subject=common_pb2.Subject(kind=common_pb2.RESIDENT_ID, id=subject),
            fields=GRANTED,
            purpose=PURPOSE,
            matter_id=f"MCA-2026-{number:06d}",
            operator_id="clerk-7",
        )
        for number, subject in enumerate(subjects)
    ]
