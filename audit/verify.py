"""Offline verification of an export with nothing but the log's public key.

Each entry's leaf is hashed again and compared with the recorded leaf hash (an edit), its
index with its position and with the index inside the entry (a deletion, insertion or
reordering), and the running RFC 6962 root with every signed checkpoint (a consistent
forgery, which is then localised between the last matching checkpoint and this one).
Failures raise VerificationError naming the first bad index.

Speed matters (an export has millions of lines): an entry line written in the export's own
layout is checked without parsing the JSON — its "entry" value is exactly the leaf bytes,
so hashing that slice hashes what any reader sees. A line in any other layout (re-written
by another tool) is parsed and re-canonicalised instead.
"""

from __future__ import annotations

import base64
import hashlib
import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from audit import merkle
from audit.entry import canonical_json
from audit.signing import SignatureError, verify_checkpoint
from exchange.pki import load_public_key_raw
from exchange.v1 import audit_pb2

_PREFIX = b'{"index":'
_HASH_KEY = b',"leaf_hash":"'
_ENTRY_KEY = b'","entry":'
_INNER_INDEX = b',"index":'


class VerificationError(Exception):
    """The log or export is not what the log signed. `index` is the first bad entry (or the
    first entry of the range a checkpoint failed for); None when no entry is to blame."""

    def __init__(self, index: int | None, problem: str) -> None:
        super().__init__(f"FAILED at index {index}: {problem}" if index is not None else problem)
        self.index = index
        self.problem = problem


@dataclass(frozen=True)
class VerifyResult:
    """What verified: how many entries, from which index, and the signed root they hash to."""

    entries: int
    first_index: int
    tree_size: int
    root: bytes


class LogVerifier:
    """Feeds entries and checkpoints in log order; raises VerificationError on the first fault."""

    def __init__(self, public_key_raw: bytes) -> None:
        self.public_key_raw = public_key_raw
        self.frontier = merkle.Frontier()
        self.first_index: int | None = None
        self.entries = 0
        self.checked_size = 0  # tree size of the last checkpoint that matched
        self.root = merkle.EMPTY_ROOT
        self.checkpoints = 0

    def start_at(self, tree_size: int, hashes: list[bytes]) -> None:
        """Begin after `tree_size` entries whose complete subtree hashes are `hashes`."""
        if self.entries or self.first_index is not None:
            raise VerificationError(None, "the frontier must come before every entry")
        try:
            self.frontier = merkle.Frontier(tree_size, hashes)
        except ValueError as exc:
            raise VerificationError(tree_size, f"bad frontier: {exc}") from None
        self.first_index = self.checked_size = tree_size

    def entry(self, index: int, leaf: bytes, recorded_hash: bytes, inner_index: int) -> None:
        """Check one entry: its position, its own index field and its leaf hash."""
        expected = self.frontier.size
        if self.first_index is None:
            if index != 0:
                raise VerificationError(
                    0, f"the export starts at index {index} without the frontier before it"
                )
            self.first_index = 0
        if index != expected:
            raise VerificationError(
                expected,
                f"expected entry {expected}, found entry {index}: "
                "entries were deleted, inserted or reordered",
            )
        if inner_index != index:
            raise VerificationError(
                index, f"the entry's content says index {inner_index} (moved or swapped)"
            )
        digest = hashlib.sha256(b"\x00" + leaf).digest()
        if digest != recorded_hash:
            raise VerificationError(
                index, "entry content does not match its recorded leaf hash (edited)"
            )
        self.frontier.append(digest)
        self.entries += 1

    def checkpoint(self, signed: audit_pb2.SignedCheckpoint) -> None:
        """Check a signed checkpoint against the entries so far."""
        try:
            checkpoint = verify_checkpoint(signed, self.public_key_raw)
        except SignatureError as exc:
            raise VerificationError(None, f"checkpoint: {exc}") from None
        size = self.frontier.size
        if checkpoint.tree_size != size:
            raise VerificationError(
                size,
                f"a checkpoint for tree size {checkpoint.tree_size} stands after entry "
                f"{size - 1}: lines were deleted, inserted or reordered",
            )
        root = self.frontier.root()
        if root != checkpoint.root_hash:
            raise VerificationError(
                self.checked_size,
                f"entries {self.checked_size}..{size - 1} do not hash to the root signed for "
                f"tree size {size}: an entry in this range was changed, added, removed or "
                "reordered and its leaf hash forged",
            )
        self.checked_size = size
        self.root = root
        self.checkpoints += 1

    def finish(self) -> VerifyResult:
        """The result, once every entry is covered by a matching signed checkpoint."""
        if self.checked_size != self.frontier.size:
            raise VerificationError(
                self.checked_size,
                f"entries {self.checked_size}..{self.frontier.size - 1} are not covered by a "
                "signed checkpoint (truncated, or a checkpoint removed)",
            )
        if not self.checkpoints:
            raise VerificationError(None, "no signed checkpoint: nothing can be verified")
        return VerifyResult(
            entries=self.entries,
            first_index=self.first_index or 0,
            tree_size=self.checked_size,
            root=self.root,
        )


def verify_export(path: Path, hub_public_key: Path | bytes) -> VerifyResult:
    """Verify an export file with the log's public key (PEM path or raw 32 bytes)."""
    public_key_raw = (
        hub_public_key if isinstance(hub_public_key, bytes) else load_public_key_raw(hub_public_key)
    )
    verifier = LogVerifier(public_key_raw)
    with path.open("rb") as export:
        _verify_lines(verifier, iter(export))
    return verifier.finish()


def _verify_lines(verifier: LogVerifier, lines: Iterator[bytes]) -> None:
    """Feed export lines to `verifier`. Lines in the export's own entry layout that pass
    every check are handled inline here — this loop is the verifier's whole cost — and
    anything else (a checkpoint, a frontier, a re-written or faulty line) goes through
    LogVerifier, which also produces the error messages."""
    sha256 = hashlib.sha256
    frontier = verifier.frontier
    for number, line in enumerate(lines, start=1):
        at = line.find(_HASH_KEY, 9, 40)
        if at > 0 and line.startswith(_PREFIX) and line.endswith(b"}\n"):
            leaf = line[at + 88 : -2]
            inner_at = leaf.find(_INNER_INDEX)
            inner = leaf[inner_at + 9 : leaf.find(b",", inner_at + 9)]
            index = line[9:at]
            digest = sha256(b"\x00" + leaf).digest()
            size = frontier.size
            if (
                inner_at > 0
                and index == inner
                and index.isdigit()
                and int(index) == size
                and digest.hex().encode() == line[at + 14 : at + 78]
                and line[at + 78 : at + 88] == _ENTRY_KEY
            ):
                if verifier.first_index is None:
                    verifier.first_index = 0  # no frontier line came first: size is 0
                # Frontier.append(), inlined: a method call per entry costs 10%.
                hashes = frontier.hashes
                while size & 1:
                    digest = sha256(b"\x01" + hashes.pop() + digest).digest()
                    size >>= 1
                hashes.append(digest)
                frontier.size += 1
                verifier.entries += 1
                continue
        fast = _entry_fields(line) if line.startswith(_PREFIX) else None
        if fast is not None:
            verifier.entry(*fast)  # raises: the fast path above refused this line
        else:
            _slow_line(verifier, line, number)
            # A frontier line replaces the verifier's frontier: entries after it must extend
            # that one, not the empty tree the loop started with.
            frontier = verifier.frontier


def _entry_fields(line: bytes) -> tuple[int, bytes, bytes, int] | None:
    """(index, leaf, recorded hash, index inside the entry) of a line in the export's own
    layout, or None to take the slow path."""
    line = line.rstrip(b"\r\n")
    at = line.find(_HASH_KEY, 9, 40)
    if at < 0 or line[at + 78 : at + 88] != _ENTRY_KEY or not line.endswith(b"}"):
        return None
    try:
        index = int(line[9:at])
        recorded = bytes.fromhex(line[at + 14 : at + 78].decode())
    except ValueError:
        return None
    leaf = line[at + 88 : -1]
    inner_at = leaf.find(_INNER_INDEX)
    inner_end = leaf.find(b",", inner_at + 9)
    if inner_at < 0 or inner_end < 0:
        return None
    try:
        inner_index = int(leaf[inner_at + 9 : inner_end])
    except ValueError:
        return None
    return index, leaf, recorded, inner_index


def _slow_line(verifier: LogVerifier, line: bytes, number: int) -> None:
    if not line.strip():
        return
    position = verifier.frontier.size
    try:
        record = json.loads(line)
        if "checkpoint" in record:
            fields = record["checkpoint"]
            verifier.checkpoint(
                audit_pb2.SignedCheckpoint(
                    checkpoint=base64.b64decode(fields["checkpoint"], validate=True),
                    key_id=fields["key_id"],
                    algorithm=fields["algorithm"],
                    signature=base64.b64decode(fields["signature"], validate=True),
                )
            )
        elif "frontier" in record:
            fields = record["frontier"]
            hashes = [bytes.fromhex(digest) for digest in fields["hashes"]]
            verifier.start_at(int(fields["tree_size"]), hashes)
        else:
            entry = record["entry"]
            verifier.entry(
                int(record["index"]),
                canonical_json(entry),
                bytes.fromhex(record["leaf_hash"]),
                int(entry["index"]),
            )
    except VerificationError:
        raise
    except (ValueError, KeyError, TypeError) as exc:
        raise VerificationError(
            position, f"line {number} is not a valid export line ({exc.__class__.__name__})"
        ) from None
