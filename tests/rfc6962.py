"""RFC 6962 §2.1 written out again for the tests, independent of audit.merkle.

MTH, PATH and PROOF follow the RFC's recursive definitions literally; the two `*_root`
functions check a proof by running the same recursion backwards: they rebuild the root(s)
a proof claims and the tests compare them with the signed ones.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence


def _k(n: int) -> int:
    k = 1
    while k * 2 < n:
        k *= 2
    return k


def leaf(d: bytes) -> bytes:
    return hashlib.sha256(b"\x00" + d).digest()


def node(left: bytes, right: bytes) -> bytes:
    return hashlib.sha256(b"\x01" + left + right).digest()


def mth(leaves: Sequence[bytes]) -> bytes:
    """MTH(D[n]) over leaf *hashes*."""
    n = len(leaves)
    if n == 0:
        return hashlib.sha256(b"").digest()
    if n == 1:
        return leaves[0]
    k = _k(n)
    return node(mth(leaves[:k]), mth(leaves[k:]))


def path(m: int, leaves: Sequence[bytes]) -> list[bytes]:
    n = len(leaves)
    if n == 1:
        return []
    k = _k(n)
    if m < k:
        return [*path(m, leaves[:k]), mth(leaves[k:])]
    return [*path(m - k, leaves[k:]), mth(leaves[:k])]


def proof(m: int, leaves: Sequence[bytes]) -> list[bytes]:
    return _subproof(m, leaves, True)


def _subproof(m: int, leaves: Sequence[bytes], b: bool) -> list[bytes]:
    n = len(leaves)
    if m == n:
        return [] if b else [mth(leaves)]
    k = _k(n)
    if m <= k:
        return [*_subproof(m, leaves[:k], b), mth(leaves[k:])]
    return [*_subproof(m - k, leaves[k:], False), mth(leaves[:k])]


def inclusion_root(m: int, n: int, leaf_hash: bytes, hashes: Sequence[bytes]) -> bytes:
    """The root that PATH(m, D[n]) = hashes leads to from the leaf hash (PATH backwards)."""
    if n == 1:
        assert not hashes, "too many hashes"
        return leaf_hash
    assert hashes, "too few hashes"
    k = _k(n)
    if m < k:
        return node(inclusion_root(m, k, leaf_hash, hashes[:-1]), hashes[-1])
    return node(hashes[-1], inclusion_root(m - k, n - k, leaf_hash, hashes[:-1]))


def consistency_roots(
    m: int, n: int, first_root: bytes, hashes: Sequence[bytes]
) -> tuple[bytes, bytes]:
    """(old root, new root) that PROOF(m, D[n]) = hashes claims (SUBPROOF backwards)."""
    return _subproof_roots(m, n, first_root, list(hashes), True)


def _subproof_roots(
    m: int, n: int, first_root: bytes, hashes: list[bytes], b: bool
) -> tuple[bytes, bytes]:
    if m == n:
        if b:
            assert not hashes, "too many hashes"
            return first_root, first_root
        assert len(hashes) == 1, "wrong number of hashes"
        return hashes[0], hashes[0]
    assert hashes, "too few hashes"
    k = _k(n)
    if m <= k:
        old, new = _subproof_roots(m, k, first_root, hashes[:-1], b)
        return old, node(new, hashes[-1])
    old, new = _subproof_roots(m - k, n - k, first_root, hashes[:-1], False)
    return node(hashes[-1], old), node(hashes[-1], new)
