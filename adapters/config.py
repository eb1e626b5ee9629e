"""The adapter node's config file (TOML): where it listens, who it is, how it reads records.

Unknown keys are refused with their name, and relative paths (signing key, TLS files, SQLite
files, data files) are taken from the folder the config file is in. A complete example:

    # psb-adapter.toml — the public security bureau's adapter node
    listen = "127.0.0.1:7601"          # host:port; port 0 picks a free one
    department = "PSB"                 # issuer code put in every Document
    signing_key = "keys/psb.sign.key"  # Ed25519 private key (exchange pki signing-key)
    shutdown_grace_seconds = 5         # optional: how long in-flight calls may finish

    [tls]                              # this node's server identity (role "adapter")
    ca = "pki/ca.pem"
    cert = "pki/psb-adapter.pem"
    key = "pki/psb-adapter.key"
    crl = "pki/ca.crl"                 # optional; default: ca.crl next to `ca`, when present

    [backend]                          # kind: "sql", "files", or an installed plug-in
    kind = "sql"
    url = "sqlite:///psb.db"

    [certificate_types.resident_identity]
    table = "residents"
    subject_column = "id_number"
    document_id_column = "certificate_no"
    issued_at_column = "issued_on"
    valid_until_column = "expires_on"
    timezone = "Asia/Shanghai"
    fields = { name = "full_name", birth_date = "birth_date", address = "household_address" }

The `[backend]` table without `kind`, plus `certificate_types` when present, are the
backend's options: the backend's own config class (adapters/backends/sql.py, files.py or the
plug-in's) checks them when the node starts.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from adapters.backends import Backend, load_backend
from adapters.backends.options import OptionReader
from exchange.config import read_toml_config
from exchange.tls import TlsFiles

_KEYS = (
    "listen",
    "department",
    "signing_key",
    "shutdown_grace_seconds",
    "tls",
    "backend",
    "certificate_types",
)
DEFAULT_GRACE_SECONDS = 5.0


@dataclass(frozen=True)
class AdapterConfig:
    """A parsed adapter node config; paths are absolute."""

    listen: str
    department: str
    signing_key: Path
    tls: TlsFiles
    backend_kind: str
    # Everything the backend is built from: [backend] minus `kind`, plus certificate_types.
    backend_options: Mapping[str, Any] = field(repr=False)
    base_dir: Path
    shutdown_grace_seconds: float = DEFAULT_GRACE_SECONDS
    # The CA's revocation list checked on every call; None: ca.crl next to tls.ca.
    crl: Path | None = None

    @classmethod
    def from_file(cls, path: Path) -> AdapterConfig:
        """Read a TOML config; relative paths in it are taken from its folder."""
        return read_toml_config(path, cls.from_dict)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any], base_dir: Path) -> AdapterConfig:
        """Parse a config already read from TOML; ValueError names any unknown or bad key."""
        reader = OptionReader(d, "config", _KEYS)
        tls_table = reader.table("tls")
        tls = OptionReader(tls_table, "tls", ("ca", "cert", "key", "crl"))
        backend = dict(reader.table("backend"))
        kind = backend.pop("kind", None)
        if not isinstance(kind, str) or not kind:
            raise ValueError('backend.kind: required, e.g. "sql", "files" or a plug-in\'s kind')
        if "certificate_types" in backend:
            raise ValueError("backend: put certificate types in [certificate_types.<code>]")
        if "certificate_types" in d:
            backend["certificate_types"] = reader.table("certificate_types")
        return cls(
            listen=_listen_address(reader.text("listen")),
            department=reader.text("department"),
            signing_key=reader.path("signing_key", base_dir),
            tls=TlsFiles(
                ca=tls.path("ca", base_dir),
                cert=tls.path("cert", base_dir),
                key=tls.path("key", base_dir),
            ),
            backend_kind=kind,
            backend_options=backend,
            base_dir=base_dir,
            shutdown_grace_seconds=_grace(d.get("shutdown_grace_seconds", DEFAULT_GRACE_SECONDS)),
            crl=tls.path("crl", base_dir) if "crl" in tls_table else None,
        )

    def load_backend(self) -> Backend:
        """The configured backend, built (files read, engine made) now."""
        return load_backend(self.backend_kind, self.backend_options, self.base_dir)


def _listen_address(address: str) -> str:
    host, _, port = address.rpartition(":")
    if not host or not port.isdigit() or int(port) > 65535:
        raise ValueError(f"listen: expected host:port, got {address!r}")
    return address


def _grace(value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or value < 0:
        raise ValueError("shutdown_grace_seconds: expected a number of seconds >= 0")
    return float(value)
