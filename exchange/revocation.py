"""Revoking certificates, publishing the CA's CRL, and checking callers against it on every call.

The CA side: `revoke_certificates` marks certificates revoked in the CA's index and rewrites
DIR/ca.crl, a standard X.509 CRL signed by the CA, atomically (readers see the old list or the
new one). The verifier side (hub, adapter nodes): a `RevocationList` re-reads that file when a
`stat` shows it changed, so a revocation takes effect on the next call without a restart, and
`check_certificate` refuses revoked and expired certificates with UNAUTHENTICATED. The TLS
handshake already refuses expired certificates, but a connection outlives its handshake.

The CRL's nextUpdate is informational here: a local CA publishes on every revocation, and an
exchange that refused everybody when no revocation happened for a while would fail closed for
no reason. A CRL that cannot be read or whose signature does not verify is ignored with an
error in the log, keeping the last good list: a broken file never un-revokes anybody.
"""

from __future__ import annotations

import datetime as dt
import logging
import os
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed448, ed25519, rsa

from exchange.ca_index import (
    CRL_FILE,
    CertificateAuthority,
    CertificateIndex,
    IndexChange,
    IssuedCertificate,
    Status,
    certified_key,
    format_serial,
    write_atomically,
)
from exchange.errors import unauthenticated
from exchange.identity import Identity

log = logging.getLogger(__name__)

# The reasons `exchange pki revoke --reason` offers (RFC 5280 CRLReason, snake case).
REASONS: dict[str, x509.ReasonFlags | None] = {
    "unspecified": None,  # RFC 5280: leave the reason code out rather than say "unspecified"
    "key_compromise": x509.ReasonFlags.key_compromise,
    "affiliation_changed": x509.ReasonFlags.affiliation_changed,
    "superseded": x509.ReasonFlags.superseded,
    "cessation_of_operation": x509.ReasonFlags.cessation_of_operation,
    "privilege_withdrawn": x509.ReasonFlags.privilege_withdrawn,
}
CRL_VALIDITY = dt.timedelta(days=365)
# Key types a CA (ours, or an organisation's root) may sign its CRL with.
CRL_SIGNER_KEYS = (
    ec.EllipticCurvePublicKey,
    rsa.RSAPublicKey,
    ed25519.Ed25519PublicKey,
    ed448.Ed448PublicKey,
)


# --- the CA side ---------------------------------------------------------------------------------


def revoke_certificates(
    ca_dir: Path,
    *,
    name: str | None = None,
    serial: int | None = None,
    reason: str = "unspecified",
    now: dt.datetime | None = None,
) -> list[IssuedCertificate]:
    """Revoke the certificate with `serial`, or every valid one named `name`; publish the CRL.
    For reason "key_compromise", every certificate of the same key is revoked too.

    Returns the records revoked (a certificate revoked before keeps its first revocation).
    Raises ValueError when nothing matches: a revocation that silently did nothing would leave
    the operator believing a compromised identity is locked out.
    """
    if (name is None) == (serial is None):
        raise ValueError("give exactly one of a name or a serial")
    if reason not in REASONS:
        raise ValueError(f"reason {reason!r} is not one of {', '.join(REASONS)}")
    when = (now or dt.datetime.now(dt.UTC)).replace(microsecond=0)
    ca = CertificateAuthority.at(ca_dir)
    with CertificateIndex(ca_dir).changing() as change:
        if serial is not None:
            targets = [r for r in change.records if r.serial == serial]
            if not targets:
                raise ValueError(
                    f"serial {format_serial(serial)} is not in {ca_dir / 'issued.json'}: "
                    "this CA did not issue it"
                )
        else:
            targets = [r for r in change.records if r.name == name]
            if not targets:
                raise ValueError(f"this CA has issued no certificate named {name!r}")
            targets = [r for r in targets if r.status(when) is Status.VALID]
            if not targets:
                raise ValueError(f"every certificate named {name!r} is already revoked or expired")
        if reason == "key_compromise":
            # Renewed with --keep-key, other certificates certify the same key: it is the key
            # that is compromised, so every one of them is revoked, expired ones too (else a
            # renewal of one of those, keeping its key, would certify it again).
            keys = {certified_key(ca_dir, r.serial) for r in targets} - {None}
            targets += [
                r
                for r in change.records
                if r not in targets
                and r.revoked_at is None
                and certified_key(ca_dir, r.serial) in keys
            ]
        revoked = [change.revoke(r.serial, when, reason) for r in targets]
        _publish(ca, change, when)
    return [record for record in revoked if record is not None]


def publish_crl(ca_dir: Path, now: dt.datetime | None = None) -> Path:
    """(Re)write DIR/ca.crl from the index; returns its path. `exchange pki init` calls this."""
    ca = CertificateAuthority.at(ca_dir)
    with CertificateIndex(ca_dir).changing() as change:
        _publish(ca, change, now or dt.datetime.now(dt.UTC))
    return ca.crl


def _publish(ca: CertificateAuthority, change: IndexChange, now: dt.datetime) -> None:
    ca_cert = ca.load_certificate()
    builder = (
        x509.CertificateRevocationListBuilder()
        .issuer_name(ca_cert.subject)
        .last_update(now)
        .next_update(now + CRL_VALIDITY)
        .add_extension(x509.CRLNumber(change.next_crl_number()), critical=False)
    )
    ski = ca_cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
    builder = builder.add_extension(
        x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ski), critical=False
    )
    for record in change.records:
        if record.revoked_at is None:
            continue
        entry = (
            x509.RevokedCertificateBuilder()
            .serial_number(record.serial)
            .revocation_date(record.revoked_at)
        )
        flag = REASONS.get(record.reason)
        if flag is not None:
            entry = entry.add_extension(x509.CRLReason(flag), critical=False)
        builder = builder.add_revoked_certificate(entry.build())
    crl = builder.sign(ca.load_key(), hashes.SHA256())
    write_atomically(ca.crl, crl.public_bytes(serialization.Encoding.PEM))


# --- the verifier side ---------------------------------------------------------------------------


class RevocationList:
    """The revoked serials of a CRL file, re-read when the file changes (one `stat` per check).

    `required`: the file must exist now (a CRL path set explicitly in a configuration). When
    not required, a missing file means nothing is revoked yet, and it is picked up once it
    appears. A file that disappears after it was read leaves the last list in force.
    """

    def __init__(self, path: Path, ca_cert: Path, *, required: bool = True) -> None:
        self.path = path
        self._issuers = x509.load_pem_x509_certificates(ca_cert.read_bytes())
        self._revoked: frozenset[int] = frozenset()
        self._number = -1  # CRLNumber of the list in force: an older list never replaces it
        self._seen: tuple[int, int, int] | None = None
        if required and not path.exists():
            raise FileNotFoundError(f"CRL {path} does not exist")
        if path.exists():
            # At start-up a CRL that does not verify is an error to fix, not to run past.
            self._revoked = self._load()
            self._seen = _signature(path.stat())

    @property
    def revoked(self) -> frozenset[int]:
        """The revoked serial numbers as of the last refresh."""
        return self._revoked

    def refresh(self) -> bool:
        """Re-read the file if it changed since the last read; True when it was re-read."""
        try:
            seen = _signature(os.stat(self.path))
        except FileNotFoundError:
            return False
        if seen == self._seen:
            return False
        self._seen = seen
        try:
            self._revoked = self._load()
        except (OSError, ValueError) as exc:
            log.error("CRL %s not applied, keeping the previous list: %s", self.path, exc)
            return False
        log.info("CRL %s loaded: %d revoked certificates", self.path, len(self._revoked))
        return True

    def is_revoked(self, serial: int) -> bool:
        """Whether `serial` is revoked, per the file as it is now."""
        self.refresh()
        return serial in self._revoked

    def _load(self) -> frozenset[int]:
        data = self.path.read_bytes()
        try:
            crl = x509.load_pem_x509_crl(data)
        except ValueError:
            crl = x509.load_der_x509_crl(data)
        if not any(_signed_by(crl, issuer) for issuer in self._issuers):
            raise ValueError(f"{self.path} is not signed by the trusted CA")
        # A stale CRL put back in place is as well signed as the current one; accepting it
        # would quietly un-revoke everything revoked since.
        try:
            number = crl.extensions.get_extension_for_class(x509.CRLNumber).value.crl_number
        except x509.ExtensionNotFound:
            number = -1
        if number < self._number:
            raise ValueError(f"{self.path} is CRL number {number}, older than {self._number}")
        self._number = number
        return frozenset(entry.serial_number for entry in crl)


def revocation_list_for(ca_cert: Path, crl: Path | None = None) -> RevocationList:
    """The revocations a server trusting `ca_cert` applies: `crl` if configured (it must exist),
    else the CA folder's ca.crl, watched for when it is absent (a CA not made by `exchange pki`).
    """
    if crl is not None:
        return RevocationList(crl, ca_cert, required=True)
    return RevocationList(ca_cert.parent / CRL_FILE, ca_cert, required=False)


def check_certificate(
    identity: Identity, revocations: RevocationList | None, now: dt.datetime
) -> None:
    """Raise unauthenticated(...) when the caller's certificate is revoked or has expired."""
    if revocations is not None and revocations.is_revoked(identity.serial):
        raise unauthenticated(f"certificate {format_serial(identity.serial)} is revoked")
    if now >= identity.not_after:
        raise unauthenticated(
            f"certificate {format_serial(identity.serial)} expired at "
            f"{identity.not_after.isoformat()}"
        )


def _signed_by(crl: x509.CertificateRevocationList, issuer: x509.Certificate) -> bool:
    if crl.issuer != issuer.subject:
        return False
    public_key = issuer.public_key()
    if not isinstance(public_key, CRL_SIGNER_KEYS):
        return False
    try:
        return crl.is_signature_valid(public_key)
    except (InvalidSignature, TypeError, ValueError):
        return False


def _signature(stat: os.stat_result) -> tuple[int, int, int]:
    # An atomic replace gives the file a new inode even when size and mtime happen to match.
    return (stat.st_ino, stat.st_mtime_ns, stat.st_size)
