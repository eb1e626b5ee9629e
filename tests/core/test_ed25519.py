"""Ed25519 through libsodium: plain RFC 8032 signatures, interchangeable with `cryptography`'s."""

from __future__ import annotations

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from exchange import ed25519


def test_each_library_verifies_what_the_other_signed() -> None:
    private_key = Ed25519PrivateKey.generate()
    public_raw = private_key.public_key().public_bytes_raw()
    message = b"a released document"

    ours = ed25519.Signer(private_key).sign(message)
    assert ours == private_key.sign(message)  # Ed25519 signing is deterministic
    private_key.public_key().verify(ours, message)  # raises if it does not verify
    assert ed25519.verify(public_raw, private_key.sign(message), message)


@pytest.mark.parametrize(
    "change",
    ["message", "signature", "key", "short signature", "short key"],
)
def test_anything_altered_or_misshapen_does_not_verify(change: str) -> None:
    private_key = Ed25519PrivateKey.generate()
    public_raw = private_key.public_key().public_bytes_raw()
    message = b"a released document"
    signature = ed25519.Signer(private_key).sign(message)
    if change == "message":
        message = b"another document"
    elif change == "signature":
        signature = bytes([signature[0] ^ 1]) + signature[1:]
    elif change == "key":
        public_raw = Ed25519PrivateKey.generate().public_key().public_bytes_raw()
    elif change == "short signature":
        signature = signature[:63]
    else:
        public_raw = public_raw[:31]
    assert not ed25519.verify(public_raw, signature, message)
