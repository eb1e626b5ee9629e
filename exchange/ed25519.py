"""Ed25519 signatures on the hot path, computed by libsodium (PyNaCl).

Every granted lookup is signed once by the issuing department's adapter node and verified
once by the hub, and every committed audit batch is signed once. libsodium does each in about
half the time of the OpenSSL build that `cryptography` ships (verification: 55 µs against
113 µs on the 2-core development VM), and verification is the largest single cost the hub
adds to a lookup. Keys are still generated, stored and named with `cryptography`
(exchange/pki.py); this module only takes their raw bytes. The signatures are plain RFC 8032
Ed25519 either way, so each library verifies what the other signed.
"""

from __future__ import annotations

import functools

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from nacl.bindings import crypto_core_ed25519_is_valid_point
from nacl.exceptions import BadSignatureError
from nacl.signing import SigningKey, VerifyKey

SIGNATURE_LENGTH = 64


class Signer:
    """Signs with one private key."""

    def __init__(self, private_key: Ed25519PrivateKey) -> None:
        self._key = SigningKey(private_key.private_bytes_raw())

    def sign(self, message: bytes) -> bytes:
        """The 64-byte signature of `message`."""
        return self._key.sign(message).signature


def verify(public_key_raw: bytes, signature: bytes, message: bytes) -> bool:
    """Whether `signature` is a valid signature of `message` by the raw 32-byte public key;
    False, never an exception, for a key or signature of the wrong shape."""
    if len(signature) != SIGNATURE_LENGTH:
        return False
    try:
        _verify_key(public_key_raw).verify(message, signature)
    except (BadSignatureError, ValueError, TypeError):
        return False
    return True


def is_usable_public_key(public_key_raw: bytes) -> bool:
    """Whether `public_key_raw` is a public key as a private key makes one: 32 bytes encoding
    a point of the curve's prime-order group. About half of all 32-byte strings decode to no
    point and most of the rest to points outside that group (`verify`, libsodium, refuses
    every signature for the small-order ones): bytes like that are a mistake, not a key."""
    return len(public_key_raw) == 32 and crypto_core_ed25519_is_valid_point(public_key_raw)


@functools.lru_cache(maxsize=1024)
def _verify_key(public_key_raw: bytes) -> VerifyKey:
    return VerifyKey(public_key_raw)
