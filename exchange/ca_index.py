"""A local CA's directory: its files, and the index of what it issued and revoked.

DIR/ca.pem and DIR/ca.key are the CA; DIR/ca.crl its published revocations (exchange/revocation.py);
DIR/issued.json the index, with a copy of each certificate under DIR/issued/.

Like OpenSSL's `index.txt` and `newcerts/`, the index lets the CA renew a certificate without
its files at hand, list what is still valid, and publish revocations. Every change runs under
an exclusive lock on DIR/.index.lock and replaces issued.json atomically, so two `exchange pki`
commands at once never lose each other's change and a crash never leaves half a file.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import enum
import fcntl
import json
import os
import secrets
from collections.abc import Iterator
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

CA_CERT_FILE = "ca.pem"
CA_KEY_FILE = "ca.key"
CRL_FILE = "ca.crl"
INDEX_FILE = "issued.json"
COPIES_DIR = "issued"
LOCK_FILE = ".index.lock"
FORMAT = 1


@dataclass(frozen=True)
class CertificateAuthority:
    """Where a local CA keeps its certificate (ca.pem), private key (ca.key) and CRL (ca.crl)."""

    directory: Path
    cert: Path
    key: Path

    @classmethod
    def at(cls, directory: Path) -> CertificateAuthority:
        """The CA whose files are (or will be) in `directory`."""
        return cls(directory, directory / CA_CERT_FILE, directory / CA_KEY_FILE)

    @property
    def crl(self) -> Path:
        """Where the CA publishes its certificate revocation list."""
        return self.directory / CRL_FILE

    def load_certificate(self) -> x509.Certificate:
        """The CA certificate."""
        return x509.load_pem_x509_certificate(self.cert.read_bytes())

    def load_key(self) -> ec.EllipticCurvePrivateKey:
        """The CA's private key (ECDSA; unencrypted PEM)."""
        key = serialization.load_pem_private_key(self.key.read_bytes(), password=None)
        if not isinstance(key, ec.EllipticCurvePrivateKey):
            raise ValueError(f"{self.key} is not an ECDSA key")
        return key


class Status(enum.StrEnum):
    """Where a certificate stands now."""

    VALID = "valid"
    EXPIRED = "expired"
    REVOKED = "revoked"


@dataclass(frozen=True)
class IssuedCertificate:
    """One certificate the CA signed, as the index remembers it."""

    serial: int
    name: str  # CN
    role: str  # OU
    department: str  # O
    hosts: tuple[str, ...]  # the SANs besides the name
    not_before: dt.datetime
    not_after: dt.datetime
    certificate: str  # where it was written (absolute path)
    key: str
    revoked_at: dt.datetime | None = None
    reason: str = ""

    @property
    def serial_hex(self) -> str:
        """The serial as the CLI and error messages show it: lowercase hex."""
        return format_serial(self.serial)

    def status(self, now: dt.datetime) -> Status:
        """Revoked wins over expired: a revoked certificate stays revoked for the record."""
        if self.revoked_at is not None:
            return Status.REVOKED
        return Status.EXPIRED if now >= self.not_after else Status.VALID


def format_serial(serial: int) -> str:
    """A certificate serial number as lowercase hex without leading zeros."""
    return format(serial, "x")


def parse_serial(text: str) -> int:
    """A serial from hex as people paste it: any case, optional 0x prefix and ':' separators."""
    cleaned = text.strip().lower().removeprefix("0x").replace(":", "")
    try:
        serial = int(cleaned, 16)
    except ValueError:
        raise ValueError(f"serial {text!r} is not hexadecimal") from None
    if serial <= 0:
        raise ValueError(f"serial {text!r} must be positive")
    return serial


def record_for(certificate: x509.Certificate, cert_path: Path, key_path: Path) -> IssuedCertificate:
    """The index record of a certificate just written to `cert_path` (key at `key_path`)."""
    name = _attribute(certificate, NameOID.COMMON_NAME)
    sans = certificate.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    hosts = [str(value) for value in sans.get_values_for_type(x509.DNSName) if value != name]
    hosts += [str(value) for value in sans.get_values_for_type(x509.IPAddress)]
    return IssuedCertificate(
        serial=certificate.serial_number,
        name=name,
        role=_attribute(certificate, NameOID.ORGANIZATIONAL_UNIT_NAME),
        department=_attribute(certificate, NameOID.ORGANIZATION_NAME),
        hosts=tuple(hosts),
        not_before=certificate.not_valid_before_utc,
        not_after=certificate.not_valid_after_utc,
        certificate=str(cert_path.resolve()),
        key=str(key_path.resolve()),
    )


class CertificateIndex:
    """The index of one CA directory. Read with `records()`, change inside `changing()`."""

    def __init__(self, ca_dir: Path) -> None:
        self.directory = ca_dir
        self.path = ca_dir / INDEX_FILE

    def records(self) -> list[IssuedCertificate]:
        """Every certificate recorded, oldest first (empty when nothing was issued yet)."""
        return self._read()[0]

    def find(
        self, *, name: str | None = None, serial: int | None = None
    ) -> list[IssuedCertificate]:
        """The records with this name (oldest first) or this serial."""
        return [
            record
            for record in self.records()
            if (name is None or record.name == name) and (serial is None or record.serial == serial)
        ]

    @contextlib.contextmanager
    def changing(self) -> Iterator[IndexChange]:
        """The index, locked against other writers; saved when the block ends without error."""
        self.directory.mkdir(parents=True, exist_ok=True)
        with (self.directory / LOCK_FILE).open("a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            try:
                records, crl_number = self._read()
                change = IndexChange(records, crl_number)
                yield change
                if change.dirty:
                    self._write(change.records, change.crl_number)
            finally:
                fcntl.flock(lock, fcntl.LOCK_UN)

    def add(self, certificate: x509.Certificate, cert_path: Path, key_path: Path) -> None:
        """Record a certificate just issued, and keep a copy of it under DIR/issued/."""
        copies = self.directory / COPIES_DIR
        copies.mkdir(parents=True, exist_ok=True)
        pem = certificate.public_bytes(serialization.Encoding.PEM)
        write_atomically(copies / f"{format_serial(certificate.serial_number)}.pem", pem)
        with self.changing() as change:
            change.put(record_for(certificate, cert_path, key_path))

    def _read(self) -> tuple[list[IssuedCertificate], int]:
        try:
            document = json.loads(self.path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            return [], 0
        if document.get("format") != FORMAT:
            raise ValueError(f"{self.path}: unknown index format {document.get('format')!r}")
        records = [_from_json(item) for item in document["certificates"]]
        return records, int(document.get("crl_number", 0))

    def _write(self, records: list[IssuedCertificate], crl_number: int) -> None:
        document = {
            "format": FORMAT,
            "crl_number": crl_number,
            "certificates": [_to_json(record) for record in records],
        }
        write_atomically(self.path, json.dumps(document, indent=2).encode("utf-8") + b"\n")


@dataclass
class IndexChange:
    """The index's content while it is locked for a change."""

    records: list[IssuedCertificate]
    crl_number: int
    dirty: bool = False

    def put(self, record: IssuedCertificate) -> None:
        """Add a record, or replace the one with the same serial."""
        self.records = [r for r in self.records if r.serial != record.serial] + [record]
        self.records.sort(key=lambda r: (r.not_before, r.serial))
        self.dirty = True

    def revoke(self, serial: int, when: dt.datetime, reason: str) -> IssuedCertificate | None:
        """Mark a recorded certificate revoked; None when the index does not know the serial.

        A certificate already revoked keeps its first revocation time and reason.
        """
        for record in self.records:
            if record.serial == serial:
                if record.revoked_at is not None:
                    return record
                revoked = replace(record, revoked_at=when, reason=reason)
                self.put(revoked)
                return revoked
        return None

    def next_crl_number(self) -> int:
        """The number the next published CRL carries (RFC 5280 cRLNumber: only increases)."""
        self.crl_number += 1
        self.dirty = True
        return self.crl_number


def _attribute(certificate: x509.Certificate, oid: x509.ObjectIdentifier) -> str:
    values = certificate.subject.get_attributes_for_oid(oid)
    return str(values[0].value) if values else ""


def _to_json(record: IssuedCertificate) -> dict[str, Any]:
    values = asdict(record)
    values["serial"] = record.serial_hex
    values["hosts"] = list(record.hosts)
    for key in ("not_before", "not_after", "revoked_at"):
        when = getattr(record, key)
        values[key] = when.isoformat() if when is not None else None
    return values


def _from_json(values: dict[str, Any]) -> IssuedCertificate:
    revoked_at = values.get("revoked_at")
    return IssuedCertificate(
        serial=int(values["serial"], 16),
        name=values["name"],
        role=values["role"],
        department=values["department"],
        hosts=tuple(values.get("hosts", ())),
        not_before=dt.datetime.fromisoformat(values["not_before"]),
        not_after=dt.datetime.fromisoformat(values["not_after"]),
        certificate=values.get("certificate", ""),
        key=values.get("key", ""),
        revoked_at=dt.datetime.fromisoformat(revoked_at) if revoked_at else None,
        reason=values.get("reason", ""),
    )


def certified_key(ca_dir: Path, serial: int) -> bytes | None:
    """The DER public key (SubjectPublicKeyInfo) the certificate `serial` certifies, from the
    CA's own copy under DIR/issued/; None when there is no copy."""
    try:
        pem = (ca_dir / COPIES_DIR / f"{format_serial(serial)}.pem").read_bytes()
    except FileNotFoundError:
        return None
    return (
        x509.load_pem_x509_certificate(pem)
        .public_key()
        .public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    )


def write_atomically(path: Path, data: bytes) -> None:
    """Replace `path` with `data` so readers see the old file or the new one, never a mix."""
    temporary = path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp")
    try:
        with temporary.open("xb") as out:
            out.write(data)
            out.flush()
            os.fsync(out.fileno())
        os.replace(temporary, path)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise
