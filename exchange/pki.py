"""The local PKI: a CA, TLS identities for hubs, adapters and departments, Ed25519 signing keys.

An identity certificate says who a party is: CN=<name>, O=<department code>, OU=<role>.
The hub maps it to an `exchange.identity.Identity`. Signing keys are separate from TLS keys:
an adapter node signs the documents it releases with its department's Ed25519 key, and the
registry holds the public half under `key_id_for(public key)`.

Private keys are created with mode 0600 from the first byte (never chmod-ed afterwards), and
written to a temporary name first so a crash never leaves a half-written key behind.
"""

from __future__ import annotations

import argparse
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

from exchange.identity import Role
from exchange.tls import TlsFiles

DEFAULT_CA_NAME = "Once-Only Exchange local CA"
DEFAULT_HOSTS = ("localhost", "127.0.0.1")
CA_DAYS = 3650
# Tolerates small clock differences between the machine issuing and the one verifying.
CLOCK_SKEW = dt.timedelta(minutes=5)
# Names become file names and DNS SANs, so they are restricted to what is safe as both.
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,62}")


@dataclass(frozen=True)
class CertificateAuthority:
    """Where a local CA keeps its certificate (ca.pem) and private key (ca.key)."""

    directory: Path
    cert: Path
    key: Path

    @classmethod
    def at(cls, directory: Path) -> CertificateAuthority:
        """The CA whose files are (or will be) in `directory`."""
        return cls(directory, directory / "ca.pem", directory / "ca.key")


@dataclass(frozen=True)
class SigningKeyFiles:
    """An Ed25519 signing key pair on disk and the key id the registry knows it by."""

    private: Path
    public: Path
    key_id: str


def init_ca(directory: Path, common_name: str = DEFAULT_CA_NAME) -> CertificateAuthority:
    """Create a new ECDSA P-256 CA in `directory` (ca.pem, ca.key with mode 0600).

    Refuses (FileExistsError) when the directory already holds a CA key: replacing it would
    silently invalidate every certificate it issued.
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
    issue certificates the hub must refuse; the CLI only offers the known roles.
    """
    _check_name(name)
    if not role or not department:
        raise ValueError("role and department must not be empty")
    if days < 1:
        raise ValueError(f"days must be at least 1, got {days}")
    ca = CertificateAuthority.at(ca_dir)
    ca_cert = x509.load_pem_x509_certificate(ca.cert.read_bytes())
    ca_key = serialization.load_pem_private_key(ca.key.read_bytes(), password=None)
    if not isinstance(ca_key, ec.EllipticCurvePrivateKey):
        raise ValueError(f"{ca.key} is not an ECDSA key")
    key = ec.generate_private_key(ec.SECP256R1())
    start = not_before if not_before is not None else dt.datetime.now(dt.UTC) - CLOCK_SKEW
    subject = x509.Name(
        [
            x509.NameAttribute(NameOID.COMMON_NAME, name),
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, department),
            x509.NameAttribute(NameOID.ORGANIZATIONAL_UNIT_NAME, role),
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
        .not_valid_after(start + dt.timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(_key_usage(cert_sign=False), critical=True)
        .add_extension(
            x509.ExtendedKeyUsage(
                [ExtendedKeyUsageOID.CLIENT_AUTH, ExtendedKeyUsageOID.SERVER_AUTH]
            ),
            critical=False,
        )
        .add_extension(x509.SubjectAlternativeName(_alt_names(name, hosts)), critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ca_ski),
            critical=False,
        )
        .sign(ca_key, hashes.SHA256())
    )
    out_dir.mkdir(parents=True, exist_ok=True)
    files = TlsFiles(ca=ca.cert, cert=out_dir / f"{name}.pem", key=out_dir / f"{name}.key")
    _write_private(files.key, _pkcs8(key))
    files.cert.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return files


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


# --- exchange pki ... -------------------------------------------------------------------------


def add_cli(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add `exchange pki init | issue | signing-key`."""
    pki = subparsers.add_parser("pki", help="local CA, TLS identities and signing keys")
    commands = pki.add_subparsers(dest="pki_command", required=True, metavar="PKI_COMMAND")

    init = commands.add_parser("init", help="create a local CA (ca.pem, ca.key) in DIR")
    init.add_argument("--dir", type=Path, required=True, help="CA directory")
    init.add_argument("--common-name", default=DEFAULT_CA_NAME, help="CA subject common name")
    init.set_defaults(run=_run_init)

    issue = commands.add_parser("issue", help="issue a TLS identity signed by the CA in DIR")
    issue.add_argument("--dir", type=Path, required=True, help="CA directory; output goes here")
    issue.add_argument("--name", required=True, help="common name, also a DNS SAN")
    issue.add_argument("--role", required=True, choices=[role.value for role in Role])
    issue.add_argument("--department", required=True, help="department code (EXCHANGE for hub)")
    issue.add_argument(
        "--host",
        action="append",
        dest="hosts",
        help=f"extra SAN, DNS name or IP (repeatable; default: {' '.join(DEFAULT_HOSTS)})",
    )
    issue.add_argument("--days", type=int, default=365, help="validity in days (default 365)")
    issue.set_defaults(run=_run_issue)

    signing = commands.add_parser("signing-key", help="create an Ed25519 document signing key")
    signing.add_argument("--dir", type=Path, required=True, help="output directory")
    signing.add_argument("--name", required=True, help="file name stem, e.g. the department")
    signing.set_defaults(run=_run_signing_key)


def _run_init(args: argparse.Namespace) -> int:
    ca = init_ca(args.dir, args.common_name)
    print(ca.cert)
    print(ca.key)
    return 0


def _run_issue(args: argparse.Namespace) -> int:
    hosts = tuple(args.hosts) if args.hosts else DEFAULT_HOSTS
    files = issue_identity(
        args.dir, args.dir, args.name, args.role, args.department, hosts, args.days
    )
    print(files.cert)
    print(files.key)
    return 0


def _run_signing_key(args: argparse.Namespace) -> int:
    files = generate_signing_key(args.dir, args.name)
    print(files.private)
    print(files.public)
    print(f"key id: {files.key_id}")
    return 0
