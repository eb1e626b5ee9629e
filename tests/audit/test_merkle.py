"""audit.merkle against RFC 6962 written out independently (rfc6962.py)."""

from __future__ import annotations

import hashlib

import pytest
import rfc6962
from hypothesis import given
from hypothesis import strategies as st

from audit import merkle

LEAVES = [rfc6962.leaf(f"entry {i}".encode()) for i in range(300)]


def test_empty_tree_root_is_hash_of_nothing() -> None:
    assert merkle.root([]) == hashlib.sha256(b"").digest()


@pytest.mark.parametrize("size", [1, 2, 3, 4, 5, 7, 8, 9, 31, 64, 65, 255, 256, 257, 300])
def test_root_and_frontier_match_rfc_mth(size: int) -> None:
    frontier = merkle.Frontier()
    for digest in LEAVES[:size]:
        frontier.append(digest)
    assert merkle.root(LEAVES[:size]) == rfc6962.mth(LEAVES[:size])
    assert frontier.root() == rfc6962.mth(LEAVES[:size])


@given(st.integers(1, 300).flatmap(lambda n: st.tuples(st.just(n), st.integers(0, n - 1))))
def test_inclusion_proofs_are_rfc_paths(case: tuple[int, int]) -> None:
    size, index = case
    hashes = merkle.inclusion_proof(index, size, merkle.list_range_hash(LEAVES[:size]))
    assert hashes == rfc6962.path(index, LEAVES[:size])
    root = rfc6962.mth(LEAVES[:size])
    merkle.verify_inclusion(index, size, LEAVES[index], hashes, root)
    assert rfc6962.inclusion_root(index, size, LEAVES[index], hashes) == root


@given(st.integers(1, 300).flatmap(lambda n: st.tuples(st.integers(1, n), st.just(n))))
def test_consistency_proofs_are_rfc_proofs(case: tuple[int, int]) -> None:
    first, second = case
    hashes = merkle.consistency_proof(first, second, merkle.list_range_hash(LEAVES[:second]))
    assert hashes == rfc6962.proof(first, LEAVES[:second])
    old, new = rfc6962.mth(LEAVES[:first]), rfc6962.mth(LEAVES[:second])
    merkle.verify_consistency(first, second, old, new, hashes)
    assert rfc6962.consistency_roots(first, second, old, hashes) == (old, new)


@pytest.mark.parametrize("size", [1, 2, 3, 5, 7, 8, 9, 33, 64, 100])
def test_batch_root_and_paths_are_rfc_mth_and_paths(size: int) -> None:
    root, paths = merkle.root_and_paths(LEAVES[:size])
    assert root == rfc6962.mth(LEAVES[:size])
    assert paths == [rfc6962.path(m, LEAVES[:size]) for m in range(size)]


def test_wrong_inclusion_proofs_raise_proof_error() -> None:
    root = rfc6962.mth(LEAVES[:10])
    good = rfc6962.path(3, LEAVES[:10])
    with pytest.raises(merkle.ProofError):
        merkle.verify_inclusion(4, 10, LEAVES[3], good, root)  # wrong index
    with pytest.raises(merkle.ProofError):
        merkle.verify_inclusion(3, 10, LEAVES[3], good[:-1], root)  # too short
    with pytest.raises(merkle.ProofError):
        merkle.verify_inclusion(3, 10, LEAVES[3], [*good, good[0]], root)  # too long
    with pytest.raises(merkle.ProofError):
        merkle.verify_inclusion(10, 10, LEAVES[3], good, root)  # beyond the tree


def test_wrong_consistency_proofs_raise_proof_error() -> None:
    old, new = rfc6962.mth(LEAVES[:5]), rfc6962.mth(LEAVES[:12])
    good = rfc6962.proof(5, LEAVES[:12])
    merkle.verify_consistency(5, 12, old, new, good)
    with pytest.raises(merkle.ProofError):
        merkle.verify_consistency(5, 12, rfc6962.mth(LEAVES[:6]), new, good)
    with pytest.raises(merkle.ProofError):
        merkle.verify_consistency(5, 12, old, new, good[1:])
    with pytest.raises(merkle.ProofError):
        merkle.verify_consistency(12, 5, old, new, good)


@pytest.mark.parametrize("size", [1, 2, 3, 6, 7, 8, 100, 256, 299])
def test_frontier_from_last_inclusion_proof(size: int) -> None:
    hashes = rfc6962.path(size - 1, LEAVES[:size])
    frontier = merkle.frontier_from_inclusion(size, LEAVES[size - 1], hashes)
    assert frontier.root() == rfc6962.mth(LEAVES[:size])
    for digest in LEAVES[size:]:
        frontier.append(digest)
    assert frontier.root() == rfc6962.mth(LEAVES)
