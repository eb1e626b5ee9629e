"""The log's key material in use: subject pseudonyms (HMAC), sealed subjects (AES-GCM), and
the Ed25519 key that signs receipts and checkpoints.

A sealed subject is bound to its entry index (the associated data), so a sealed value copied
into another entry no longer opens.
"""

from __future__ import annotations

import hashlib
import hmac
import os
from dataclasses import dataclass

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from audit.config import SECRETS_LENGTH, AuditConfig
from audit.events import SubjectId
from exchange.ed25519 import Signer
from exchange.pki import key_id_for, load_signing_key

ALGORITHM = "Ed25519"
NONCE_LENGTH = 12


class SealError(Exception):
    """A sealed subject does not open: wrong key, wrong entry, or altered."""


@dataclass(frozen=True)
class LogKeys:
    """Everything the log signs, pseudonymises and seals with."""

    signing_key: ed25519.Ed25519PrivateKey
    hmac_key: bytes
    pseudonym_hmac: hmac.HMAC  # keyed with hmac_key and nothing hashed yet; copied per use
    aead: AESGCM
    public_key_raw: bytes
    log_id: str  # key id of the public key; also the log's identity in receipts
    signer: Signer  # signing_key, through libsodium (exchange/ed25519.py)

    @classmethod
    def load(cls, config: AuditConfig) -> LogKeys:
        """Read the key files named by `config`."""
        signing_key = load_signing_key(config.log_key)
        material = config.secrets.read_bytes()
        if len(material) != SECRETS_LENGTH:
            raise ValueError(
                f"{config.secrets}: expected {SECRETS_LENGTH} bytes of secrets, got {len(material)}"
            )
        raw = signing_key.public_key().public_bytes(
            serialization.Encoding.Raw, serialization.PublicFormat.Raw
        )
        return cls(
            signing_key=signing_key,
            hmac_key=material[:32],
            pseudonym_hmac=hmac.new(material[:32], digestmod=hashlib.sha256),
            aead=AESGCM(material[32:]),
            public_key_raw=raw,
            log_id=key_id_for(raw),
            signer=Signer(signing_key),
        )

    def subject_ref(self, subject: SubjectId) -> str:
        """The pseudonym of a subject: HMAC-SHA256 hex of "KIND:ID"."""
        # Copying a keyed HMAC skips hashing the padded key again: a third of the cost.
        pseudonym = self.pseudonym_hmac.copy()
        pseudonym.update(_plain(subject))
        return pseudonym.hexdigest()

    def seal(self, subject: SubjectId, index: int) -> bytes:
        """nonce || AES-GCM ciphertext of "KIND:ID", bound to entry `index`."""
        nonce = os.urandom(NONCE_LENGTH)
        return nonce + self.aead.encrypt(nonce, _plain(subject), str(index).encode())

    def unseal(self, sealed: bytes, index: int) -> SubjectId:
        """The subject sealed in entry `index`; raises SealError if it does not open there."""
        try:
            plain = self.aead.decrypt(
                sealed[:NONCE_LENGTH], sealed[NONCE_LENGTH:], str(index).encode()
            )
        except (InvalidTag, ValueError):
            raise SealError(f"entry {index}: sealed subject does not open") from None
        kind, _, identifier = plain.decode().partition(":")
        return SubjectId(kind=kind, id=identifier)

    def sign(self, message: bytes) -> bytes:
        """Ed25519 signature of `message` with the log key."""
        return self.signer.sign(message)


def _plain(subject: SubjectId) -> bytes:
    return f"{subject.kind}:{subject.id}".encode()
