"""The Merkle tree as stored: subtree hashes for proofs and roots, and the frontier at a size.

The sequencer stores the hash of every complete subtree of 2**TILE_LEVEL (256) leaves or
more. Any range hash the proofs need is then made of O(log n) stored nodes plus subtrees
smaller than a tile, which are hashed from at most a few tiles of leaf hashes. Reading is
done in two passes: the first records which nodes and tiles a computation touches, one
query each fetches them, the second computes.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import sqlalchemy as sa

from audit import merkle, store
from exchange.errors import data_loss

TILE_LEVEL = 8
TILE = 1 << TILE_LEVEL


def range_hashes(conn: sa.Connection, ranges: Sequence[tuple[int, int]]) -> list[bytes]:
    """MTH(D[start:end]) for each range, all within the sequenced part of the tree."""
    return _compute(conn, lambda range_hash: [range_hash(start, end) for start, end in ranges])


def frontier_at(conn: sa.Connection, size: int) -> merkle.Frontier:
    """The frontier of the tree's first `size` leaves (size within the sequenced part)."""
    subtrees = merkle.frontier_subtrees(size)
    large = [(level, position) for level, position in subtrees if level >= TILE_LEVEL]
    nodes = _nodes(conn, large)
    tail_start = size - size % TILE
    frontier = merkle.Frontier(tail_start, [nodes[key] for key in large])
    for digest in store.leaf_hashes(conn, tail_start, size):
        frontier.append(digest)
    if frontier.size != size:
        raise data_loss(f"audit log: entries {frontier.size}..{size - 1} are missing")
    return frontier


def _compute(
    conn: sa.Connection, computation: Callable[[merkle.RangeHash], list[bytes]]
) -> list[bytes]:
    wanted_nodes: set[tuple[int, int]] = set()
    wanted_tiles: set[int] = set()

    def record(level: int, position: int) -> bytes:
        if level >= TILE_LEVEL:
            wanted_nodes.add((level, position))
        else:
            wanted_tiles.add((position << level) >> TILE_LEVEL)
        return b""

    computation(merkle.subtree_range_hash(record))
    nodes = _nodes(conn, wanted_nodes)
    tiles = {tile: store.leaf_hashes(conn, tile * TILE, (tile + 1) * TILE) for tile in wanted_tiles}

    def subtree(level: int, position: int) -> bytes:
        if level >= TILE_LEVEL:
            return nodes[(level, position)]
        start = position << level
        leaves = tiles[start >> TILE_LEVEL]
        offset = start % TILE
        chunk = leaves[offset : offset + (1 << level)]
        if len(chunk) != 1 << level:
            raise data_loss(f"audit log: entries near index {start} are missing")
        return merkle.root(chunk)

    return computation(merkle.subtree_range_hash(subtree))


def _nodes(
    conn: sa.Connection, wanted: Sequence[tuple[int, int]] | set[tuple[int, int]]
) -> dict[tuple[int, int], bytes]:
    nodes = store.tree_nodes(conn, wanted)
    missing = sorted(set(wanted) - set(nodes))
    if missing:
        level, position = missing[0]
        raise data_loss(
            f"audit log: tree node for entries {position << level}..{((position + 1) << level) - 1}"
            " is missing"
        )
    return nodes
