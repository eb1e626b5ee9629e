"""What the log signs — receipts (inclusion promises) and checkpoints — and how to check them.

Both carry exactly the bytes that were signed (a serialized InclusionPromise or Checkpoint),
so a verifier checks the Ed25519 signature over those bytes with the log's public key and
only then parses them. The checks need nothing but the public key.

A promise is signed once per group-committed batch, as X-Road time-stamps its message log in
batches: it names the batch (first index, size) by its RFC 6962 root, and each receipt adds
its entry's inclusion path in that small tree. One signature then serves a whole commit.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric import ed25519

from audit import merkle
from audit.keys import ALGORITHM, LogKeys
from exchange.pki import key_id_for
from exchange.timestamps import timestamp
from exchange.v1 import audit_pb2, lookup_pb2


class SignatureError(Exception):
    """A receipt or checkpoint is not signed by the expected log key, or does not prove what
    it claims."""


def sign_batch(
    keys: LogKeys, batch_start: int, leaf_hashes: Sequence[bytes], appended_at: dt.datetime
) -> list[lookup_pb2.Receipt]:
    """Receipts for a committed batch of consecutive entries from `batch_start`: one signed
    promise over the batch's RFC 6962 root, and for each entry its path to that root."""
    root, paths = merkle.root_and_paths(leaf_hashes)
    promise = lookup_pb2.InclusionPromise(
        log_id=keys.log_id,
        batch_start=batch_start,
        batch_size=len(leaf_hashes),
        batch_root=root,
        appended_at=timestamp(appended_at),
    ).SerializeToString()
    signature = keys.sign(promise)
    log_id = keys.log_id
    return [
        lookup_pb2.Receipt(
            entry_index=batch_start + offset,
            leaf_hash=digest,
            promise=promise,
            key_id=log_id,
            algorithm=ALGORITHM,
            signature=signature,
            batch_path=path,
        )
        for offset, (digest, path) in enumerate(zip(leaf_hashes, paths, strict=True))
    ]


def sign_checkpoint(
    keys: LogKeys, tree_size: int, root_hash: bytes, moment: dt.datetime
) -> audit_pb2.SignedCheckpoint:
    """A signed tree head: the log's statement that its first `tree_size` entries hash to
    `root_hash`."""
    checkpoint = audit_pb2.Checkpoint(
        log_id=keys.log_id, tree_size=tree_size, root_hash=root_hash, time=timestamp(moment)
    ).SerializeToString()
    return audit_pb2.SignedCheckpoint(
        checkpoint=checkpoint,
        key_id=keys.log_id,
        algorithm=ALGORITHM,
        signature=keys.sign(checkpoint),
    )


def verify_receipt(
    receipt: lookup_pb2.Receipt, public_key_raw: bytes
) -> lookup_pb2.InclusionPromise:
    """The promise in `receipt`, after checking its signature, that its entry lies in the
    signed batch, and that `batch_path` leads from its leaf hash to the batch root; raises
    SignatureError naming what failed."""
    _verify(receipt.algorithm, receipt.key_id, receipt.promise, receipt.signature, public_key_raw)
    promise = lookup_pb2.InclusionPromise.FromString(receipt.promise)
    if promise.log_id != receipt.key_id:
        raise SignatureError("receipt: promise names another log")
    index, start, size = receipt.entry_index, promise.batch_start, promise.batch_size
    if not start <= index < start + size:
        raise SignatureError(
            f"receipt: entry {index} is not in the signed batch of entries "
            f"{start}..{start + size - 1}"
        )
    try:
        merkle.verify_inclusion(
            index - start, size, receipt.leaf_hash, receipt.batch_path, promise.batch_root
        )
    except merkle.ProofError as exc:
        raise SignatureError(
            f"receipt: batch_path does not prove the leaf hash of entry {index} in the signed "
            f"batch root ({exc})"
        ) from None
    return promise


def verify_checkpoint(
    signed: audit_pb2.SignedCheckpoint, public_key_raw: bytes
) -> audit_pb2.Checkpoint:
    """The checkpoint in `signed`, after checking its signature; raises SignatureError."""
    _verify(signed.algorithm, signed.key_id, signed.checkpoint, signed.signature, public_key_raw)
    checkpoint = audit_pb2.Checkpoint.FromString(signed.checkpoint)
    if checkpoint.log_id != signed.key_id:
        raise SignatureError("checkpoint: names another log")
    return checkpoint


def _verify(
    algorithm: str, key_id: str, message: bytes, signature: bytes, public_key_raw: bytes
) -> None:
    if algorithm != ALGORITHM:
        raise SignatureError(f"unsupported signature algorithm {algorithm!r}")
    expected = key_id_for(public_key_raw)
    if key_id != expected:
        raise SignatureError(f"signed by key {key_id!r}, expected the log key {expected!r}")
    try:
        ed25519.Ed25519PublicKey.from_public_bytes(public_key_raw).verify(signature, message)
    except InvalidSignature:
        raise SignatureError("signature does not verify with the log key") from None
