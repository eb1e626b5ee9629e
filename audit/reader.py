"""Reading the log for auditors: entries, inclusion and consistency proofs, exports.

Proofs and exports are only given for tree sizes a signed checkpoint covers (the sequenced
part of the tree), so every answer can be checked against a signature. Asking beyond it is
OUT_OF_RANGE — the same request succeeds once a later checkpoint covers it; asking for an
inconsistent combination (an index not below the tree size, a first size above the second)
is INVALID_ARGUMENT. All functions block; AuditLog runs them in threads.
"""

from __future__ import annotations

from collections.abc import Iterator

import grpc
import sqlalchemy as sa

from audit import merkle, store, tree
from audit.export import EntryRecord, ExportRecord, FrontierRecord
from audit.queries import EntryQuery, StoredEntry, find_entries
from audit.sequencer import Sequencer, signed_from_row
from exchange.errors import ExchangeError, invalid_argument
from exchange.v1 import audit_pb2

EXPORT_CHUNK = 5000


def out_of_range(message: str) -> ExchangeError:
    """A request beyond what the log has signed so far."""
    return ExchangeError(grpc.StatusCode.OUT_OF_RANGE, message)


class LogReader:
    """Read access to one log's tables."""

    def __init__(self, engine: sa.Engine, sequencer: Sequencer) -> None:
        self.engine = engine
        self.sequencer = sequencer

    def find(self, query: EntryQuery) -> list[StoredEntry]:
        """Entries matching `query` (see audit.queries)."""
        with self.engine.connect() as conn:
            return find_entries(conn, query, store.signed_size(conn))

    def inclusion_proof(self, index: int, tree_size: int = 0) -> audit_pb2.InclusionProof:
        """PATH(index, D[tree_size]); tree_size 0 means the latest checkpoint's."""
        with self.engine.connect() as conn:
            signed_size = store.signed_size(conn)
            size = tree_size or signed_size
            if size > signed_size:
                raise out_of_range(
                    f"tree_size: {size} is beyond the latest checkpoint ({signed_size}); "
                    "ask for a fresh checkpoint first"
                )
            if index >= size:
                if tree_size:
                    raise invalid_argument(f"index: {index} is not below tree_size {tree_size}")
                raise out_of_range(
                    f"index: {index} is beyond the latest checkpoint's tree size {size}"
                )
            ranges = merkle.inclusion_ranges(index, size)
            hashes = tree.range_hashes(conn, [*ranges, (index, index + 1)])
        return audit_pb2.InclusionProof(
            index=index, tree_size=size, leaf_hash=hashes[-1], hashes=hashes[:-1]
        )

    def consistency_proof(self, first: int, second: int) -> audit_pb2.ConsistencyProof:
        """PROOF(first, D[second]); second 0 means the latest checkpoint's size."""
        with self.engine.connect() as conn:
            signed_size = store.signed_size(conn)
            size = second or signed_size
            if size > signed_size:
                raise out_of_range(
                    f"second_size: {size} is beyond the latest checkpoint ({signed_size}); "
                    "ask for a fresh checkpoint first"
                )
            if first > size:
                raise invalid_argument(f"first_size: {first} is larger than second_size {size}")
            hashes = tree.range_hashes(conn, merkle.consistency_ranges(first, size))
        return audit_pb2.ConsistencyProof(first_size=first, second_size=size, hashes=hashes)

    def export_chunks(self, from_index: int = 0, to_index: int = 0) -> Iterator[list[ExportRecord]]:
        """Export records of entries [from_index, to_index) — to_index 0 means the latest
        checkpoint's size — in chunks: the frontier (if from_index > 0), entries with the
        signed checkpoints inside the range after the entry completing each, and last the
        checkpoint of size to_index (signed now if none was)."""
        with self.engine.connect() as conn:
            signed_size = store.signed_size(conn)
            end = to_index or signed_size
            if end > signed_size:
                raise out_of_range(
                    f"to_index: {end} is beyond the latest checkpoint ({signed_size}); "
                    "ask for a fresh checkpoint first"
                )
            if from_index > end:
                raise invalid_argument(f"from_index: {from_index} is beyond to_index {end}")
            frontier = tree.frontier_at(conn, from_index) if from_index else None
        final = self.sequencer.checkpoint_at(end)
        if frontier is not None:
            yield [FrontierRecord(frontier.size, tuple(frontier.hashes))]
        # Checkpoints, like entries, are read a chunk at a time as the export reaches them:
        # one every few seconds for years is millions.
        checkpoints = store.iter_checkpoints(self.engine, from_index, end - 1)
        following = next(checkpoints, None)
        chunk: list[ExportRecord] = []
        for index, leaf, digest in store.iter_entries(self.engine, from_index, end):
            chunk.append(EntryRecord(index, leaf, digest))
            while following is not None and int(following.tree_size) <= index + 1:
                if int(following.tree_size) == index + 1:
                    chunk.append(signed_from_row(following))
                following = next(checkpoints, None)
            if len(chunk) >= EXPORT_CHUNK:
                yield chunk
                chunk = []
        chunk.append(final)
        yield chunk
