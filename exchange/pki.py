"""The local PKI: a CA, TLS identities for hubs, adapters and departments, Ed25519 signing keys.

An identity certificate says who a party is: CN=<name>, O=<department code>, OU=<role>.
The hub maps it to an `exchange.identity.Identity`. Signing keys are separate from TLS keys:
an adapter node signs the documents it releases with its department's Ed25519 key, and the
registry holds the public half under `key_id_for(public key)`.

The CA records every certificate it issues in its index (exchange/ca_index.py), so an
identity can be renewed (`renew_identity`: same subject and SANs, new key pair by default)
and revoked (exchange/revocation.py). The `exchange pki` commands are in exchange/pki_cli.py.

Private keys are created with mode 0600 from the first byte (never chmod-ed afterwards), and
written to a temporary name first so a crash never leaves a half-written key behind.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import ipaddress
import os
import re
import secrets
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from exchange.ca_index import (
    CertificateAuthority,
    CertificateIndex,
    IssuedCertificate,
    format_serial,
    write_atomically,
)
from exchange.revocation import publish_crl, revoke_certificates
from exchange.tls import TlsFiles

DEFAULT_CA_NAME = "Once-Only Exchange local CA"
DEFAULT_HOSTS = ("localhost", "127.0.0.1")
CA_DAYS = 3650
# Tolerates small clock differences between the machine issuing and the one verifying.
CLOCK_SKEW = dt.timedelta(minutes=5)
# Names become file names and DNS SANs, so they are restricted to what is safe as both.
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,62}")


@dataclass(frozen=True)
class SigningKeyFiles:
    """An Ed25519 signing key pair on disk and the key id the registry knows it by."""

    private: Path
    public: Path
    key_id: str


def init_ca(directory: Path, common_name: str = DEFAULT_CA_NAME) -> CertificateAuthority:
    """Create a new ECDSA P-256 CA in `directory` (ca.pem, ca.key with mode 0600).

    Refuses (FileExistsError) when the directory already holds a CA key: replacing it would
    silently invalidate every certificate it issued. Also publishes an empty CRL (ca.crl).
    """
    ca = CertificateAuthority.at(directory)
    if ca.key.exists():
        raise FileExistsError(f"{ca.key} already exists; refusing to replace an existing CA")
    directory.mkdir(parents=True, exist_ok=True)
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name(
        [
            x509.NameAttribute(NameOID.COMMON_NAME, common_name),
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "Once-Only Exchange"),
        ]
    )
    now = dt.datetime.now(dt.UTC)
    ski = x509.SubjectKeyIdentifier.from_public_key(key.public_key())
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - CLOCK_SKEW)
        .not_valid_after(now + dt.timedelta(days=CA_DAYS))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(_key_usage(cert_sign=True), critical=True)
        .add_extension(ski, critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ski), critical=False
        )
        .sign(key, hashes.SHA256())
    )
    _write_private(ca.key, _pkcs8(key))
    ca.cert.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    publish_crl(directory, now)  # an empty CRL, so verifiers can point at it from day one
    return ca


def issue_identity(
    ca_dir: Path,
    out_dir: Path,
    name: str,
    role: str,
    department: str,
    hosts: Sequence[str] = DEFAULT_HOSTS,
    days: int = 365,
    *,
    not_before: dt.datetime | None = None,
) -> TlsFiles:
    """Issue a TLS identity signed by the CA in `ca_dir`: out_dir/<name>.pem and <name>.key.

    Subject CN=<name>, O=<department>, OU=<role>; SAN DNS <name> plus each host (IP addresses
    as IP SANs). Valid for both client and server authentication, from `not_before` (default:
    now, less a little clock skew) for `days` days. The role is not checked here, so tests can
    issue certificates the hub must refuse; the CLI only offers the known roles. The CA's
    index (exchange/ca_index.py) records the certificate, so it can be renewed and revoked.
    """
    _check_name(name)
    if not role or not department:
        raise ValueError("role and department must not be empty")
    if days < 1:
        raise ValueError(f"days must be at least 1, got {days}")
    start = not_before if not_before is not None else dt.datetime.now(dt.UTC) - CLOCK_SKEW
    return _issue(
        CertificateAuthority.at(ca_dir),
        _Holder(name, role, department, tuple(hosts)),
        start,
        dt.timedelta(days=days),
        ec.generate_private_key(ec.SECP256R1()),
        out_dir / f"{name}.pem",
        out_dir / f"{name}.key",
    )


def renew_identity(
    ca_dir: Path,
    *,
    name: str | None = None,
    serial: int | None = None,
    days: int | None = None,
    new_key: bool = True,
    out_dir: Path | None = None,
    revoke_previous: bool = False,
) -> tuple[TlsFiles, IssuedCertificate]:
    """A new certificate for the same holder: same subject and SANs, new key pair by default.

    The certificate to renew is the one with `serial`, or the newest unrevoked one named
    `name`. It is written where the previous one was (or to `out_dir`), valid from now for
    `days` (default: as long as the previous one was). The previous certificate stays valid
    until it expires, so holders can switch over without a gap, unless `revoke_previous`
    (reason "superseded"). Returns the files and the record of the certificate replaced.
    """
    previous = _certificate_to_renew(CertificateIndex(ca_dir), name, serial)
    lifetime = (
        dt.timedelta(days=days)
        if days is not None
        else dt.timedelta(days=max(1, round((previous.not_after - previous.not_before).days)))
    )
    if lifetime < dt.timedelta(days=1):
        raise ValueError(f"days must be at least 1, got {days}")
    cert_path, key_path = Path(previous.certificate), Path(previous.key)
    if out_dir is not None:
        cert_path, key_path = out_dir / cert_path.name, out_dir / key_path.name
    if new_key:
        key = ec.generate_private_key(ec.SECP256R1())
    else:
        loaded = serialization.load_pem_private_key(Path(previous.key).read_bytes(), None)
        if not isinstance(loaded, ec.EllipticCurvePrivateKey):
            raise ValueError(f"{previous.key} is not an ECDSA key")
        key = loaded
    holder = _Holder(previous.name, previous.role, previous.department, previous.hosts)
    start = dt.datetime.now(dt.UTC) - CLOCK_SKEW
    files = _issue(
        CertificateAuthority.at(ca_dir), holder, start, lifetime, key, cert_path, key_path
    )
    if revoke_previous:
        revoke_certificates(ca_dir, serial=previous.serial, reason="superseded")
    return files, previous


def _certificate_to_renew(
    index: CertificateIndex, name: str | None, serial: int | None
) -> IssuedCertificate:
    if (name is None) == (serial is None):
        raise ValueError("give exactly one of a name or a serial")
    if serial is not None:
        found = index.find(serial=serial)
        if not found:
            raise ValueError(f"serial {format_serial(serial)} is not in this CA's index")
        if found[0].revoked_at is not None:
            # Renewing would hand a revoked (perhaps compromised) holder a valid certificate.
            raise ValueError(
                f"serial {format_serial(serial)} is revoked; issue a new identity instead"
            )
        return found[0]
    candidates = [r for r in index.find(name=name) if r.revoked_at is None]
    if not candidates:
        raise ValueError(f"this CA holds no unrevoked certificate named {name!r}")
    holders = {(r.role, r.department) for r in candidates}
    if len(holders) > 1:
        raise ValueError(
            f"several holders are named {name!r} ({', '.join(sorted(map('/'.join, holders)))}); "
            "renew by --serial"
        )
    return candidates[-1]  # the index keeps records oldest first


@dataclass(frozen=True)
class _Holder:
    """Whom a certificate names: CN, OU, O and the extra SANs."""

    name: str
    role: str
    department: str
    hosts: tuple[str, ...]


def _issue(
    ca: CertificateAuthority,
    holder: _Holder,
    start: dt.datetime,
    lifetime: dt.timedelta,
    key: ec.EllipticCurvePrivateKey,
    cert_path: Path,
    key_path: Path,
) -> TlsFiles:
    """Sign a certificate for `holder` and `key`, write both files, record it in the index."""
    for path in (cert_path, key_path):
        if path.resolve() in {ca.cert.resolve(), ca.key.resolve(), ca.crl.resolve()}:
            # Issued into the CA's directory under its name, it would replace the CA's own
            # key: every CRL signed afterwards would be refused, revocations with it.
            raise ValueError(f"{path} is the CA's own file; choose another name")
    ca_cert = ca.load_certificate()
    subject = x509.Name(
        [
            x509.NameAttribute(NameOID.COMMON_NAME, holder.name),
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, holder.department),
            x509.NameAttribute(NameOID.ORGANIZATIONAL_UNIT_NAME, holder.role),
        ]
    )
    ca_ski = ca_cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(start)
        .not_valid_after(start + lifetime)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(_key_usage(cert_sign=False), critical=True)
        .add_extension(
            x509.ExtendedKeyUsage(
                [ExtendedKeyUsageOID.CLIENT_AUTH, ExtendedKeyUsageOID.SERVER_AUTH]
            ),
            critical=False,
        )
        .add_extension(
            x509.SubjectAlternativeName(_alt_names(holder.name, holder.hosts)), critical=False
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ca_ski),
            critical=False,
        )
        .sign(ca.load_key(), hashes.SHA256())
    )
    cert_path.parent.mkdir(parents=True, exist_ok=True)
    _write_private(key_path, _pkcs8(key))
    write_atomically(cert_path, cert.public_bytes(serialization.Encoding.PEM))
    CertificateIndex(ca.directory).add(cert, cert_path, key_path)
    return TlsFiles(ca=ca.cert, cert=cert_path, key=key_path)


def generate_signing_key(out_dir: Path, name: str) -> SigningKeyFiles:
    """Create an Ed25519 key pair: <name>.sign.key (PKCS8 PEM, 0600) and <name>.sign.pub.

    Refuses (FileExistsError) to replace an existing key: documents signed with it would no
    longer verify against the key the registry holds.
    """
    _check_name(name)
    private_path = out_dir / f"{name}.sign.key"
    public_path = out_dir / f"{name}.sign.pub"
    if private_path.exists():
        raise FileExistsError(f"{private_path} already exists; refusing to replace a signing key")
    out_dir.mkdir(parents=True, exist_ok=True)
    key = ed25519.Ed25519PrivateKey.generate()
    public = key.public_key()
    _write_private(private_path, _pkcs8(key))
    public_path.write_bytes(
        public.public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    )
    raw = public.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return SigningKeyFiles(private=private_path, public=public_path, key_id=key_id_for(raw))


def key_id_for(public_raw: bytes) -> str:
    """The key id of an Ed25519 public key: first 16 hex characters of SHA-256 of its 32 bytes."""
    if len(public_raw) != 32:
        raise ValueError(f"an Ed25519 public key has 32 bytes, got {len(public_raw)}")
    return hashlib.sha256(public_raw).hexdigest()[:16]


def load_signing_key(path: Path) -> ed25519.Ed25519PrivateKey:
    """Read an Ed25519 private key (PKCS8 PEM, unencrypted)."""
    key = serialization.load_pem_private_key(path.read_bytes(), password=None)
    if not isinstance(key, ed25519.Ed25519PrivateKey):
        raise ValueError(f"{path} is not an Ed25519 private key")
    return key


def load_public_key_raw(path: Path) -> bytes:
    """Read an Ed25519 public key (SubjectPublicKeyInfo PEM) and return its raw 32 bytes."""
    key = serialization.load_pem_public_key(path.read_bytes())
    if not isinstance(key, ed25519.Ed25519PublicKey):
        raise ValueError(f"{path} is not an Ed25519 public key")
    return key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


def _key_usage(*, cert_sign: bool) -> x509.KeyUsage:
    return x509.KeyUsage(
        digital_signature=True,
        content_commitment=False,
        key_encipherment=False,
        data_encipherment=False,
        key_agreement=False,
        key_cert_sign=cert_sign,
        crl_sign=cert_sign,
        encipher_only=False,
        decipher_only=False,
    )


def _alt_names(name: str, hosts: Sequence[str]) -> list[x509.GeneralName]:
    names: list[x509.GeneralName] = [x509.DNSName(name)]
    for host in hosts:
        try:
            entry: x509.GeneralName = x509.IPAddress(ipaddress.ip_address(host))
        except ValueError:
            entry = x509.DNSName(host)
        if entry not in names:
            names.append(entry)
    return names


def _check_name(name: str) -> None:
    if not _NAME.fullmatch(name):
        raise ValueError(
            f"name {name!r} must be 1-63 letters, digits, '.', '_' or '-', starting with a "
            "letter or digit"
        )


def _pkcs8(key: ec.EllipticCurvePrivateKey | ed25519.Ed25519PrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def _write_private(path: Path, data: bytes) -> None:
    """Write a private key readable by its owner only, atomically replacing `path`."""
    temporary = path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp")
    fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with os.fdopen(fd, "wb") as out:
            out.write(data)
            out.flush()
            os.fsync(out.fileno())
        os.replace(temporary, path)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise
