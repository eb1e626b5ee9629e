"""The export file: JSON Lines an auditor verifies offline with only the log's public key.

    {"frontier":{"tree_size":N,"hashes":["<hex>",...]}}     only when the export starts at N > 0
    {"index":i,"leaf_hash":"<hex>","entry":{...}}           one per entry, in index order
    {"checkpoint":{"checkpoint":"<b64>","key_id":"…","algorithm":"Ed25519","signature":"<b64>"}}

An entry line's "entry" is written as the leaf bytes themselves (canonical JSON), so the
verifier can hash exactly what a reader sees. A checkpoint line follows the entry that
completes its tree size: every signed checkpoint inside the range is included, which lets
a verifier say between which two checkpoints a change was made; the last line is the
checkpoint whose size is the end of the export. The frontier line carries the complete
subtree hashes of the entries before the range, so a partial export still verifies against
the final checkpoint (a wrong frontier cannot produce the signed root).
"""

from __future__ import annotations

import base64
import json
from collections.abc import AsyncIterable, Iterable
from dataclasses import dataclass
from typing import BinaryIO

from exchange.v1 import audit_pb2


@dataclass(frozen=True, slots=True)
class FrontierRecord:
    """The complete subtree hashes of the entries before an export's first one."""

    tree_size: int
    hashes: tuple[bytes, ...]


@dataclass(frozen=True, slots=True)
class EntryRecord:
    """One entry: its index, leaf bytes and the leaf hash the log recorded."""

    index: int
    leaf: bytes
    leaf_hash: bytes


ExportRecord = FrontierRecord | EntryRecord | audit_pb2.SignedCheckpoint


def entry_line(index: int, leaf_hash: bytes, leaf: bytes) -> bytes:
    """The line of one entry; `leaf` is inserted verbatim as the "entry" value."""
    return b'{"index":%d,"leaf_hash":"%s","entry":%s}\n' % (index, leaf_hash.hex().encode(), leaf)


def checkpoint_line(signed: audit_pb2.SignedCheckpoint) -> bytes:
    """The line of one signed checkpoint (bytes fields in base64)."""
    return _line(
        {
            "checkpoint": {
                "checkpoint": base64.b64encode(signed.checkpoint).decode(),
                "key_id": signed.key_id,
                "algorithm": signed.algorithm,
                "signature": base64.b64encode(signed.signature).decode(),
            }
        }
    )


def frontier_line(record: FrontierRecord) -> bytes:
    """The line giving the frontier an export starts from."""
    return _line(
        {
            "frontier": {
                "tree_size": record.tree_size,
                "hashes": [digest.hex() for digest in record.hashes],
            }
        }
    )


def record_line(record: ExportRecord) -> bytes:
    """The export line of any record."""
    if isinstance(record, EntryRecord):
        return entry_line(record.index, record.leaf_hash, record.leaf)
    if isinstance(record, FrontierRecord):
        return frontier_line(record)
    return checkpoint_line(record)


def write_export(records: Iterable[ExportRecord], out: BinaryIO) -> int:
    """Write records as export lines; returns the number of entries written."""
    entries = 0
    for record in records:
        out.write(record_line(record))
        entries += isinstance(record, EntryRecord)
    return entries


async def write_export_async(records: AsyncIterable[ExportRecord], out: BinaryIO) -> int:
    """write_export() for an async stream of records (AuditLog.export_records)."""
    entries = 0
    async for record in records:
        out.write(record_line(record))
        entries += isinstance(record, EntryRecord)
    return entries


def _line(obj: object) -> bytes:
    return json.dumps(obj, sort_keys=True, separators=(",", ":")).encode() + b"\n"
