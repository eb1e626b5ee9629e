"""The demo's working directory: a local CA and every identity, the departments' data, and
config files for the hub and each adapter node — the same files one would run for real with
`exchange serve --config hub.toml` and `exchange adapter serve --config <node>.toml`.
"""

from __future__ import annotations

import json
import shutil
import socket
from dataclasses import dataclass
from pathlib import Path

from audit.config import create_keys
from exchange.demo.catalogue import CERTIFICATE_TYPES, DEPARTMENTS, REQUESTER
from exchange.demo.data import (
    DemoPopulation,
    write_civil_affairs_db,
    write_health_csv,
    write_market_regulation_json,
    write_public_security_db,
)
from exchange.pki import generate_signing_key, init_ca, issue_identity
from exchange.tls import TlsFiles

MARKER = ".exchange-demo"  # only a folder carrying this is ever wiped
EXCHANGE = "EXCHANGE"


@dataclass(frozen=True)
class Workspace:
    root: Path
    hub_config: Path
    hub_address: str
    node_configs: dict[str, Path]  # department code -> adapter node config
    node_ports: dict[str, int]  # department code -> the port its node listens on
    admin: TlsFiles
    auditor: TlsFiles
    requester: TlsFiles
    audit_public_key: Path
    population: DemoPopulation


def create_workspace(root: Path, population: DemoPopulation, kafka: str | None) -> Workspace:
    """Write everything the demo runs from into `root`, replacing an earlier demo there."""
    if root.exists():
        if not (root / MARKER).exists():
            raise ValueError(f"{root} exists and is not a demo directory; choose another --dir")
        shutil.rmtree(root)
    root.mkdir(parents=True)
    (root / MARKER).touch()
    pki = root / "pki"
    init_ca(pki)

    def identity(name: str, role: str, department: str) -> TlsFiles:
        return issue_identity(pki, pki, name, role, department)

    identity("hub", "hub", EXCHANGE)
    audit = create_keys(root / "keys")
    hub_address = f"127.0.0.1:{free_port()}"
    hub_toml = _hub_toml(hub_address, audit.log_key, audit.secrets, kafka)
    (root / "hub.toml").write_text(hub_toml, "utf-8")
    node_configs, node_ports = {}, {}
    data = root / "data"
    data.mkdir()
    _write_department_data(population, data)
    for department in DEPARTMENTS:
        identity(department.node, "adapter", department.code)
        generate_signing_key(root / "keys", department.code.lower())
        config = root / f"{department.node}.toml"
        node_ports[department.code] = free_port()
        config.write_text(_node_toml(department.code, node_ports[department.code]), "utf-8")
        node_configs[department.code] = config
    return Workspace(
        root=root,
        hub_config=root / "hub.toml",
        hub_address=hub_address,
        node_configs=node_configs,
        node_ports=node_ports,
        admin=identity("admin", "admin", EXCHANGE),
        auditor=identity("auditor", "auditor", EXCHANGE),
        requester=identity("service-centre-counter", "department", REQUESTER),
        audit_public_key=audit.public_key,
        population=population,
    )


def free_port() -> int:
    """A loopback port nothing listens on now, so the config files name real, fixed ports."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def _write_department_data(population: DemoPopulation, data: Path) -> None:
    write_public_security_db(population, data / "psb.db")
    write_health_csv(population, data / "birth_certificates.csv")
    write_civil_affairs_db(population, data / "civil.db")
    write_market_regulation_json(population, data / "business_licences.json")


def _toml(value: object) -> str:
    """A TOML value: JSON's string, number and inline-table-free list syntax are valid TOML."""
    return json.dumps(value, ensure_ascii=False)


def _hub_toml(address: str, log_key: Path, secrets: Path, kafka: str | None) -> str:
    lines = [
        "# The hub: `exchange serve --config hub.toml`",
        f"listen = {_toml(address)}",
        'database = "sqlite:///hub.db"',
        "",
        "[tls]",
        'ca = "pki/ca.pem"',
        'cert = "pki/hub.pem"',
        'key = "pki/hub.key"',
        "",
        "[audit]",
        f"log_key = {_toml(str(log_key.relative_to(log_key.parents[1])))}",
        f"secrets = {_toml(str(secrets.relative_to(secrets.parents[1])))}",
        "checkpoint_interval_seconds = 2",
    ]
    if kafka:
        lines += ["", "[kafka]", f"bootstrap_servers = {_toml(kafka)}", 'topic = "exchange.audit"']
    return "\n".join(lines) + "\n"


def _node_toml(department_code: str, port: int) -> str:
    department = next(d for d in DEPARTMENTS if d.code == department_code)
    lines = [
        f"# {department.name}: `exchange adapter serve --config {department.node}.toml`",
        f'listen = "127.0.0.1:{port}"',
        f"department = {_toml(department.code)}",
        f"signing_key = {_toml(f'keys/{department.code.lower()}.sign.key')}",
        "",
        "[tls]",
        'ca = "pki/ca.pem"',
        f"cert = {_toml(f'pki/{department.node}.pem')}",
        f"key = {_toml(f'pki/{department.node}.key')}",
        "",
        "[backend]",
        f"kind = {_toml(department.backend)}",
    ]
    if department.backend == "sql":
        lines.append(f"url = {_toml(f'sqlite:///data/{department.data_file}')}")
    for spec in CERTIFICATE_TYPES:
        if spec.issuer != department.code:
            continue
        source = spec.source
        lines += ["", f"[certificate_types.{spec.code}]"]
        if department.backend == "sql":
            lines += [
                f"table = {_toml(source['table'])}",
                f"subject_column = {_toml(source['subject'])}",
                f"document_id_column = {_toml(source['document_id'])}",
                f"issued_at_column = {_toml(source['issued_at'])}",
            ]
            if "valid_until" in source:
                lines.append(f"valid_until_column = {_toml(source['valid_until'])}")
        else:
            lines += [
                f"path = {_toml(f'data/{department.data_file}')}",
                f"subject_key = {_toml(source['subject'])}",
                f"document_id_key = {_toml(source['document_id'])}",
                f"issued_at_key = {_toml(source['issued_at'])}",
            ]
        lines.append('timezone = "Asia/Shanghai"')
        mapping = ", ".join(
            f"{name} = {_toml(column)}" for name, (column, _) in spec.fields.items()
        )
        lines.append(f"fields = {{ {mapping} }}")
    return "\n".join(lines) + "\n"
