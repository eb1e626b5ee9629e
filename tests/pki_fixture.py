"""The test PKI: one CA per test session, identities and signing keys issued once and cached.

`foreign_identity` is signed by a second, unrelated CA but trusts OUR CA, so a client using it
reaches the real server and is refused in the handshake. `expired_identity` is signed by our
CA but its validity ended yesterday.
"""

from __future__ import annotations

import datetime as dt
from pathlib import Path

from exchange.pki import SigningKeyFiles, generate_signing_key, init_ca, issue_identity
from exchange.tls import TlsFiles


class TestPki:
    """Certificates and keys for tests, under one session directory."""

    __test__ = False  # not a test class, despite the name

    def __init__(self, directory: Path) -> None:
        self.dir = directory
        self.ca = init_ca(directory / "ca").cert
        self._identities: dict[tuple[str, str, str, str], TlsFiles] = {}
        self._signing_keys: dict[str, SigningKeyFiles] = {}

    def identity(self, name: str, role: str, department: str) -> TlsFiles:
        """A valid identity from our CA (issued on first use, then reused)."""
        return self._issue("valid", name, role, department)

    def foreign_identity(self, name: str, role: str, department: str) -> TlsFiles:
        """An identity signed by an unrelated CA; its `ca` is still ours, to reach our server."""
        return self._issue("foreign", name, role, department)

    def expired_identity(self, name: str, role: str, department: str) -> TlsFiles:
        """An identity from our CA whose validity ended a day ago."""
        return self._issue("expired", name, role, department)

    def signing_key(self, name: str) -> SigningKeyFiles:
        """An Ed25519 signing key pair (created on first use, then reused)."""
        if name not in self._signing_keys:
            self._signing_keys[name] = generate_signing_key(self.dir / "signing", name)
        return self._signing_keys[name]

    def _issue(self, kind: str, name: str, role: str, department: str) -> TlsFiles:
        key = (kind, name, role, department)
        if key in self._identities:
            return self._identities[key]
        # One directory per (kind, role, department), so a name may be reused across them.
        out_dir = self.dir / kind / f"{role}.{department}"
        ca_dir = self.dir / "ca"
        days, not_before = 365, None
        if kind == "foreign":
            ca_dir = self.dir / "foreign-ca"
            if not (ca_dir / "ca.key").exists():
                init_ca(ca_dir, "Unrelated CA")
        elif kind == "expired":
            days, not_before = 2, dt.datetime.now(dt.UTC) - dt.timedelta(days=3)
        files = issue_identity(
            ca_dir, out_dir, name, role, department, days=days, not_before=not_before
        )
        files = TlsFiles(ca=self.ca, cert=files.cert, key=files.key)
        self._identities[key] = files
        return files
