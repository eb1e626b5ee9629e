"""The hub's configuration: one TOML file, read once at start-up.

Relative paths (TLS files, audit keys, a relative SQLite database) are resolved against the
folder holding the configuration file, so a configuration directory can be moved as a whole.
Unknown keys are errors: a misspelt key silently ignored is a setting silently not applied.

A complete example (every key shown; only [tls] and [audit] are required)::

    # Where the hub listens for department systems, administrators and auditors (mTLS).
    listen = "127.0.0.1:7443"
    # Registry and audit log. Default: sqlite file exchange.db next to this file.
    # PostgreSQL: "postgresql://exchange@db.example/exchange".
    database = "sqlite:///exchange.db"

    [tls]
    ca = "pki/ca/ca.pem"          # the CA whose client certificates are accepted
    cert = "pki/hub/hub.pem"      # the hub's certificate (role "hub"), also its client
    key = "pki/hub/hub.key"       # certificate towards adapter nodes
    crl = "pki/ca/ca.crl"         # optional: revoked certificates, checked on every call;
                                  # default: ca.crl next to `ca`, once it exists

    [audit]                        # audit.config.AuditConfig, see there
    log_key = "keys/log.sign.key"
    secrets = "keys/audit.secrets"

    [kafka]                        # optional: publish every audit entry to Kafka
    bootstrap_servers = "127.0.0.1:9092"
    topic = "exchange.audit"

    [lookup]
    adapter_timeout_seconds = 5    # per attempt at one adapter replica
    default_deadline_seconds = 30  # bounds a lookup whose caller set no deadline
"""

from __future__ import annotations

import tomllib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import sqlalchemy as sa

from audit.config import AuditConfig
from exchange.tls import TlsFiles

T = TypeVar("T")

DEFAULT_LISTEN = "127.0.0.1:7443"
DEFAULT_DATABASE_FILE = "exchange.db"
DEFAULT_ADAPTER_TIMEOUT = 5.0
DEFAULT_DEADLINE = 30.0
DEFAULT_KAFKA_TOPIC = "exchange.audit"

_TOP_LEVEL = {"listen", "database", "tls", "audit", "kafka", "lookup"}
_TLS_REQUIRED = {"ca", "cert", "key"}
_TLS = {*_TLS_REQUIRED, "crl"}
_KAFKA = {"bootstrap_servers", "topic"}
_LOOKUP = {"adapter_timeout_seconds", "default_deadline_seconds"}


def read_toml_config(path: Path, parse: Callable[[Mapping[str, Any], Path], T]) -> T:
    """A TOML config file, parsed by `parse(document, folder)` so that relative paths in it are
    taken from its folder; ValueError names the file and what is wrong (the hub's and the
    adapter nodes' config files alike)."""
    path = Path(path)
    try:
        document = tomllib.loads(path.read_text(encoding="utf-8"))
    except tomllib.TOMLDecodeError as exc:
        raise ValueError(f"{path}: not valid TOML: {exc}") from None
    try:
        return parse(document, path.resolve().parent)
    except ValueError as exc:
        raise ValueError(f"{path}: {exc}") from None


@dataclass(frozen=True)
class LookupConfig:
    """Time limits of the lookup path."""

    adapter_timeout_seconds: float = DEFAULT_ADAPTER_TIMEOUT
    default_deadline_seconds: float = DEFAULT_DEADLINE


@dataclass(frozen=True)
class HubConfig:
    """Everything `exchange serve` needs: listen address, database, TLS, audit, lookup limits."""

    tls: TlsFiles
    audit: AuditConfig
    listen: str = DEFAULT_LISTEN
    database: str = f"sqlite:///{DEFAULT_DATABASE_FILE}"
    # The audit relay's settings: bootstrap_servers ("host:port,..."), topic. None: no Kafka.
    kafka: dict[str, Any] | None = None
    lookup: LookupConfig = field(default_factory=LookupConfig)
    # The CA's revocation list, set explicitly (it must exist); None: ca.crl next to tls.ca.
    crl: Path | None = None

    @classmethod
    def from_file(cls, path: Path) -> HubConfig:
        """Read and check a TOML configuration file; raises ValueError naming what is wrong."""
        return read_toml_config(path, cls.from_dict)

    @classmethod
    def from_dict(cls, document: Mapping[str, Any], base_dir: Path) -> HubConfig:
        """The configuration a parsed TOML document describes, paths relative to `base_dir`."""
        _reject_unknown("", document, _TOP_LEVEL)
        tls = _table(document, "tls", required=True)
        _reject_unknown("tls", tls, _TLS)
        missing = sorted(_TLS_REQUIRED - tls.keys())
        if missing:
            raise ValueError(f"[tls] needs {', '.join(repr(k) for k in missing)}")
        audit = _table(document, "audit", required=True)
        lookup = _table(document, "lookup")
        _reject_unknown("lookup", lookup, _LOOKUP)
        return cls(
            tls=TlsFiles(
                ca=_path(base_dir, tls, "ca"),
                cert=_path(base_dir, tls, "cert"),
                key=_path(base_dir, tls, "key"),
            ),
            audit=AuditConfig.from_dict(audit, base_dir),
            listen=_string(document, "listen", DEFAULT_LISTEN),
            database=database_url(
                _string(document, "database", f"sqlite:///{DEFAULT_DATABASE_FILE}"), base_dir
            ),
            kafka=_kafka(document),
            lookup=LookupConfig(
                adapter_timeout_seconds=_seconds(
                    lookup, "adapter_timeout_seconds", DEFAULT_ADAPTER_TIMEOUT
                ),
                default_deadline_seconds=_seconds(
                    lookup, "default_deadline_seconds", DEFAULT_DEADLINE
                ),
            ),
            crl=_path(base_dir, tls, "crl") if "crl" in tls else None,
        )


def database_url(url: str, base_dir: Path) -> str:
    """`url` with a relative SQLite file path made absolute against `base_dir`."""
    try:
        parsed = sa.make_url(url)
    except sa.exc.ArgumentError:
        raise ValueError(f"database: {url!r} is not a database URL") from None
    if not parsed.drivername.startswith("sqlite"):
        return url
    database = parsed.database
    if not database or database == ":memory:" or database.startswith("file:"):
        return url
    if Path(database).is_absolute():
        return url
    absolute = str((base_dir / database).resolve())
    return parsed.set(database=absolute).render_as_string(hide_password=False)


def _reject_unknown(table: str, values: Mapping[str, Any], known: set[str]) -> None:
    unknown = sorted(set(values) - known)
    if unknown:
        where = f"[{table}]" if table else "top level"
        names = ", ".join(repr(k) for k in unknown)
        raise ValueError(f"unknown key(s) at {where}: {names}; known: {', '.join(sorted(known))}")


def _table(document: Mapping[str, Any], name: str, *, required: bool = False) -> dict[str, Any]:
    value = document.get(name)
    if value is None:
        if required:
            raise ValueError(f"missing table [{name}]")
        return {}
    if not isinstance(value, dict):
        raise ValueError(f"{name}: expected a table, got {type(value).__name__}")
    return value


def _string(values: Mapping[str, Any], key: str, default: str) -> str:
    value = values.get(key, default)
    if not isinstance(value, str) or not value:
        raise ValueError(f"{key}: expected a non-empty string")
    return value


def _path(base_dir: Path, values: Mapping[str, Any], key: str) -> Path:
    path = Path(_string(values, key, ""))
    return path if path.is_absolute() else base_dir / path


def _seconds(values: Mapping[str, Any], key: str, default: float) -> float:
    value = values.get(key, default)
    if isinstance(value, bool) or not isinstance(value, int | float) or value <= 0:
        raise ValueError(f"lookup.{key}: expected a positive number of seconds")
    return float(value)


def _kafka(document: Mapping[str, Any]) -> dict[str, Any] | None:
    if "kafka" not in document:
        return None
    kafka = _table(document, "kafka")
    _reject_unknown("kafka", kafka, _KAFKA)
    servers = kafka.get("bootstrap_servers")
    if isinstance(servers, list) and all(isinstance(s, str) for s in servers):
        servers = ",".join(servers)
    if not isinstance(servers, str) or not servers.strip(","):
        raise ValueError('kafka.bootstrap_servers: expected "host:port" or a list of them')
    return {"bootstrap_servers": servers, "topic": _string(kafka, "topic", DEFAULT_KAFKA_TOPIC)}
