"""RFC 6962 Merkle trees: hashing, proofs, their verification, and the incremental frontier.

Hashing (RFC 6962 §2.1): MTH({}) = SHA-256(""), a leaf is SHA-256(0x00 || d), an interior
node SHA-256(0x01 || left || right), and a tree of n > 1 leaves splits at the largest power
of two smaller than n. Proofs are built as RFC 6962 §2.1.1 (PATH) and §2.1.2 (SUBPROOF)
describe, over a `RangeHash` that gives MTH(D[start:end]) so the caller decides where
subtree hashes come from (a list of leaves, stored nodes). Verification follows the
algorithms of RFC 9162 §2.1.3.2 and §2.1.4.2 and raises ProofError.

A tree of n leaves is a sequence of complete subtrees, one per bit set in n, largest first:
the `Frontier`. Appending a leaf merges equal-sized subtrees (O(log n), O(1) amortised) and
the root folds the frontier right to left, so a growing log never rehashes old leaves.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Sequence

EMPTY_ROOT = hashlib.sha256(b"").digest()

# MTH(D[start:end]) for 0 <= start < end <= tree size.
RangeHash = Callable[[int, int], bytes]


class ProofError(Exception):
    """A proof does not verify, or was asked for with sizes that make no sense."""


def leaf_hash(data: bytes) -> bytes:
    """SHA-256(0x00 || data)."""
    return hashlib.sha256(b"\x00" + data).digest()


def node_hash(left: bytes, right: bytes) -> bytes:
    """SHA-256(0x01 || left || right)."""
    return hashlib.sha256(b"\x01" + left + right).digest()


def split_point(n: int) -> int:
    """The largest power of two smaller than n (n >= 2)."""
    return 1 << ((n - 1).bit_length() - 1)


def root(leaf_hashes: Sequence[bytes]) -> bytes:
    """MTH of the tree with these leaf hashes."""
    frontier = Frontier()
    for digest in leaf_hashes:
        frontier.append(digest)
    return frontier.root()


def root_and_paths(leaf_hashes: Sequence[bytes]) -> tuple[bytes, list[list[bytes]]]:
    """MTH of `leaf_hashes` (at least one) and PATH(m, D[n]) for every m, in O(n log n).

    Pairing neighbours level by level, carrying an unpaired last node up unchanged, builds
    exactly RFC 6962's tree (which splits at the largest power of two), and a leaf's path is
    its node's sibling at each level where it has one, lowest first.
    """
    if not leaf_hashes:
        raise ValueError("a batch needs at least one leaf")
    sha256 = hashlib.sha256  # node_hash() inlined: this runs for every committed batch
    levels = [list(leaf_hashes)]
    while len(levels[-1]) > 1:
        below = levels[-1]
        pairs = range(0, len(below) - 1, 2)
        level = [sha256(b"\x01" + below[i] + below[i + 1]).digest() for i in pairs]
        if len(below) % 2:
            level.append(below[-1])
        levels.append(level)
    paths = []
    for m in range(len(leaf_hashes)):
        path = []
        for depth, nodes in enumerate(levels[:-1]):
            sibling = (m >> depth) ^ 1
            if sibling < len(nodes):
                path.append(nodes[sibling])
        paths.append(path)
    return levels[-1][0], paths


def list_range_hash(leaf_hashes: Sequence[bytes]) -> RangeHash:
    """A RangeHash over leaf hashes held in memory (for small trees and tests)."""
    return lambda start, end: root(leaf_hashes[start:end])


def subtree_range_hash(subtree: Callable[[int, int], bytes]) -> RangeHash:
    """A RangeHash built from `subtree(level, position)`: the hash of the complete subtree of
    2**level leaves starting at leaf position * 2**level."""

    def range_hash(start: int, end: int) -> bytes:
        size = end - start
        if size & (size - 1) == 0 and start % size == 0:
            level = size.bit_length() - 1
            return subtree(level, start >> level)
        k = split_point(size)
        return node_hash(range_hash(start, start + k), range_hash(start + k, end))

    return range_hash


def inclusion_ranges(index: int, size: int) -> list[tuple[int, int]]:
    """The ranges whose MTH make up PATH(index, D[size]), in proof order (RFC 6962 §2.1.1)."""
    if not 0 <= index < size:
        raise ProofError(f"index {index} is not in a tree of size {size}")
    ranges: list[tuple[int, int]] = []
    start, end, m = 0, size, index
    while end - start > 1:
        k = split_point(end - start)
        if m < k:
            ranges.append((start + k, end))
            end = start + k
        else:
            ranges.append((start, start + k))
            m -= k
            start += k
    ranges.reverse()
    return ranges


def consistency_ranges(first: int, second: int) -> list[tuple[int, int]]:
    """The ranges whose MTH make up PROOF(first, D[second]), in proof order (RFC 6962 §2.1.2).

    Sizes 0 and first == second give the empty proof.
    """
    if not 0 <= first <= second:
        raise ProofError(f"first size {first} must be between 0 and second size {second}")
    ranges: list[tuple[int, int]] = []
    if first in (0, second):
        return ranges
    start, end, m, whole = 0, second, first, True
    while True:
        if m == end - start:
            if not whole:
                ranges.append((start, end))
            break
        k = split_point(end - start)
        if m <= k:
            ranges.append((start + k, end))
            end = start + k
        else:
            ranges.append((start, start + k))
            m -= k
            start += k
            whole = False
    ranges.reverse()
    return ranges


def inclusion_proof(index: int, size: int, range_hash: RangeHash) -> list[bytes]:
    """PATH(index, D[size])."""
    return [range_hash(start, end) for start, end in inclusion_ranges(index, size)]


def consistency_proof(first: int, second: int, range_hash: RangeHash) -> list[bytes]:
    """PROOF(first, D[second])."""
    return [range_hash(start, end) for start, end in consistency_ranges(first, second)]


def verify_inclusion(
    index: int, size: int, leaf: bytes, proof: Sequence[bytes], expected_root: bytes
) -> None:
    """RFC 9162 §2.1.3.2: raise ProofError unless `leaf` (a leaf hash) is at `index` of the
    tree of `size` leaves with root `expected_root`."""
    if not 0 <= index < size:
        raise ProofError(f"index {index} is not in a tree of size {size}")
    fn, sn, r = index, size - 1, leaf
    for p in proof:
        if sn == 0:
            raise ProofError("inclusion proof has too many hashes")
        if fn & 1 or fn == sn:
            r = node_hash(p, r)
            while not fn & 1 and fn != 0:
                fn >>= 1
                sn >>= 1
        else:
            r = node_hash(r, p)
        fn >>= 1
        sn >>= 1
    if sn != 0:
        raise ProofError("inclusion proof has too few hashes")
    if r != expected_root:
        raise ProofError(f"inclusion proof for index {index} does not lead to the root")


def verify_consistency(
    first: int, second: int, first_root: bytes, second_root: bytes, proof: Sequence[bytes]
) -> None:
    """RFC 9162 §2.1.4.2: raise ProofError unless the tree of `first` leaves with root
    `first_root` is a prefix of the tree of `second` leaves with root `second_root`."""
    if not 0 <= first <= second:
        raise ProofError(f"first size {first} must be between 0 and second size {second}")
    if first == 0:
        if proof:
            raise ProofError("consistency proof from the empty tree must be empty")
        return
    if first == second:
        if proof:
            raise ProofError("consistency proof between equal sizes must be empty")
        if first_root != second_root:
            raise ProofError("roots of equal-sized trees differ")
        return
    if not proof:
        raise ProofError("consistency proof is empty")
    path = list(proof)
    if first & (first - 1) == 0:
        path.insert(0, first_root)
    fn, sn = first - 1, second - 1
    while fn & 1:
        fn >>= 1
        sn >>= 1
    fr = sr = path[0]
    for c in path[1:]:
        if sn == 0:
            raise ProofError("consistency proof has too many hashes")
        if fn & 1 or fn == sn:
            fr = node_hash(c, fr)
            sr = node_hash(c, sr)
            while not fn & 1 and fn != 0:
                fn >>= 1
                sn >>= 1
        else:
            sr = node_hash(sr, c)
        fn >>= 1
        sn >>= 1
    if sn != 0:
        raise ProofError("consistency proof has too few hashes")
    if fr != first_root:
        raise ProofError(f"consistency proof does not lead to the root of size {first}")
    if sr != second_root:
        raise ProofError(f"consistency proof does not lead to the root of size {second}")


def frontier_from_inclusion(size: int, last_leaf: bytes, proof: Sequence[bytes]) -> Frontier:
    """The frontier of a tree of `size` leaves from the inclusion proof of its last leaf.

    That proof holds every complete subtree left of the last leaf, which is all the frontier
    needs. Nothing here is checked: a wrong proof yields a frontier whose later root will not
    match a signed one.
    """
    ranges = inclusion_ranges(size - 1, size)
    if len(ranges) != len(proof):
        raise ProofError(f"an inclusion proof in a tree of size {size} has {len(ranges)} hashes")
    known = dict(zip(ranges, proof, strict=True))
    known[(size - 1, size)] = last_leaf

    def range_hash(start: int, end: int) -> bytes:
        if (start, end) in known:
            return known[(start, end)]
        if end - start == 1:
            raise ProofError(f"the proof has no hash for leaf {start}")
        k = split_point(end - start)
        return node_hash(range_hash(start, start + k), range_hash(start + k, end))

    return Frontier(
        size,
        [range_hash(p << level, (p + 1) << level) for level, p in frontier_subtrees(size)],
    )


def frontier_subtrees(size: int) -> list[tuple[int, int]]:
    """(level, position) of the complete subtrees making up a tree of `size`, largest first."""
    subtrees: list[tuple[int, int]] = []
    start = 0
    for level in range(size.bit_length() - 1, -1, -1):
        if size >> level & 1:
            subtrees.append((level, start >> level))
            start += 1 << level
    return subtrees


class Frontier:
    """The complete subtrees of a growing tree: the root in O(log n), appends in O(1) amortised."""

    __slots__ = ("hashes", "size")

    def __init__(self, size: int = 0, hashes: Sequence[bytes] = ()) -> None:
        if len(hashes) != size.bit_count():
            raise ValueError(f"a tree of size {size} has {size.bit_count()} frontier hashes")
        self.size = size
        self.hashes = list(hashes)  # one per set bit of size, largest subtree first

    def copy(self) -> Frontier:
        """An independent frontier at the same size."""
        return Frontier(self.size, self.hashes)

    def append(self, leaf: bytes) -> None:
        """Add a leaf hash."""
        size, hashes = self.size, self.hashes
        while size & 1:
            leaf = hashlib.sha256(b"\x01" + hashes.pop() + leaf).digest()
            size >>= 1
        hashes.append(leaf)
        self.size += 1

    def append_completing(self, leaf: bytes, min_level: int) -> list[tuple[int, int, bytes]]:
        """Add a leaf hash; return the (level, position, hash) of each complete subtree of at
        least `min_level` that it completed."""
        completed: list[tuple[int, int, bytes]] = []
        position, level = self.size, 0
        while position & 1:
            leaf = node_hash(self.hashes.pop(), leaf)
            position >>= 1
            level += 1
            if level >= min_level:
                completed.append((level, position, leaf))
        self.hashes.append(leaf)
        self.size += 1
        return completed

    def root(self) -> bytes:
        """MTH of the leaves appended so far."""
        if not self.hashes:
            return EMPTY_ROOT
        result = self.hashes[-1]
        for left in reversed(self.hashes[:-1]):
            result = node_hash(left, result)
        return result
