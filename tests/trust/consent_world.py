"""Consent fixtures for the trust tests: a citizen portal that signs consents, and subjects."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field
from typing import Any

from cryptography.hazmat.primitives.asymmetric import ed25519

from audit.events import SubjectId
from exchange.consent import issue_consent
from exchange.pki import key_id_for
from exchange.registry import ConsentIssuer, RegistrySnapshot, SigningKey
from exchange.subject import make_resident_id

ZHANG = SubjectId("RESIDENT_ID", make_resident_id("110101", dt.date(1990, 5, 17), 123))
LI = SubjectId("RESIDENT_ID", make_resident_id("310104", dt.date(1985, 11, 2), 456))
NOW = dt.datetime(2026, 3, 1, 9, 30, tzinfo=dt.UTC)


@dataclass
class Portal:
    """The citizen portal: a registered consent issuer holding one Ed25519 key."""

    id: str = "gov-portal"
    key: ed25519.Ed25519PrivateKey = field(default_factory=ed25519.Ed25519PrivateKey.generate)

    @property
    def public_key(self) -> bytes:
        return self.key.public_key().public_bytes_raw()

    @property
    def key_id(self) -> str:
        return key_id_for(self.public_key)

    def issuer(self, **key_window: Any) -> ConsentIssuer:
        """The registry record of this portal."""
        return ConsentIssuer(
            id=self.id,
            name="政务服务网",
            signing_keys=(SigningKey(self.key_id, self.public_key, "Ed25519", **key_window),),
        )

    def snapshot(self, **key_window: Any) -> RegistrySnapshot:
        """A catalogue holding only this issuer."""
        return RegistrySnapshot(1, (), (), (), (), consent_issuers=(self.issuer(**key_window),))

    def consent(self, **overrides: Any) -> str:
        """Zhang's consent for MCA to obtain her birth medical certificate for registration."""
        values: dict[str, Any] = {
            "subject": ZHANG,
            "requesting_department": "MCA",
            "certificate_types": ["birth_medical_certificate"],
            "purposes": ["birth_registration"],
            "ttl": dt.timedelta(minutes=10),
            "now": NOW,
        }
        values.update(overrides)
        return issue_consent(self.key, self.id, self.key_id, **values)
