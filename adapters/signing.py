"""Signing released documents with the issuing department's Ed25519 key.

The Document is serialized once and those exact bytes are signed and shipped as
`SignedDocument.payload`: a verifier checks the signature over the payload and only then
parses it, so no canonical form is ever needed (common.proto, SignedDocument).
"""

from __future__ import annotations

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from exchange.ed25519 import Signer
from exchange.pki import key_id_for
from exchange.v1 import common_pb2

ALGORITHM = "Ed25519"


class DocumentSigner:
    """Signs Documents with one department key and names that key by its key id."""

    def __init__(self, private_key: Ed25519PrivateKey) -> None:
        self._signer = Signer(private_key)
        self.public_key_raw: bytes = private_key.public_key().public_bytes(
            serialization.Encoding.Raw, serialization.PublicFormat.Raw
        )
        self.key_id: str = key_id_for(self.public_key_raw)

    def sign(self, document: common_pb2.Document) -> common_pb2.SignedDocument:
        """The document serialized once, with the signature over exactly those bytes."""
        payload = document.SerializeToString(deterministic=True)
        return common_pb2.SignedDocument(
            payload=payload,
            key_id=self.key_id,
            algorithm=ALGORITHM,
            signature=self._signer.sign(payload),
        )
