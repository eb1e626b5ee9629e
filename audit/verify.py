"""Offline verification of an export with nothing but the log's public key.

Each entry's leaf is hashed again and compared with the recorded leaf hash (an edit), its
index with its position and with the index inside the entry (a deletion, insertion or
reordering), and the running RFC 6962 root with every signed checkpoint (a consistent
forgery, which is then localised between the last matching checkpoint and this one).
Failures raise VerificationError naming the first bad index.

Speed matters (an export has millions of lines): an entry line written in the export's own
layout is checked without parsing the JSON — its "entry" value is exactly the leaf bytes,
so hashing that slice hashes what any reader sees. A line in any other layout (re-written
by another tool) is parsed and re-canonicalised instead, and only if every reader must read
it the same way: its keys are exactly those of one line kind audit/export.py writes (a
checkpoint line carrying an entry as well would be one entry to a line-by-line reader and
none to a verifier reading only its checkpoint), no object repeats a key (json keeps the
last value, other readers the first), and every number reads back as written, so the
entry's canonical JSON that is hashed is exactly the content any reader sees.
"""

from __future__ import annotations

import base64
import hashlib
import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from audit import merkle
from audit.entry import canonical_json
from audit.signing import SignatureError, verify_checkpoint
from exchange.pki import load_public_key_raw
from exchange.v1 import audit_pb2

_PREFIX = b'{"index":'
_HASH_KEY = b',"leaf_hash":"'
_ENTRY_KEY = b'","entry":'
_INNER_INDEX = b',"index":'

# The key sets of the three line kinds audit/export.py writes, and of their inner objects.
_ENTRY_LINE = frozenset({"index", "leaf_hash", "entry"})
_CHECKPOINT_LINE = frozenset({"checkpoint"})
_FRONTIER_LINE = frozenset({"frontier"})
_CHECKPOINT_FIELDS = frozenset({"checkpoint", "key_id", "algorithm", "signature"})
_FRONTIER_FIELDS = frozenset({"tree_size", "hashes"})


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
            # Raises, unless the line only lacks its "\n" or ends in "\r\n": the fast path
            # above refused it.
            verifier.entry(*fast)
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
    if b"%d" % index != line[9:at]:  # int() also reads " 5", "+5" and "5_0"
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
    if not line.strip(b" \t\r\n"):
        return
    position = verifier.frontier.size
    try:
        record = _STRICT_JSON.decode(line.decode())
        keys = frozenset(record) if isinstance(record, dict) else None
        if keys == _CHECKPOINT_LINE:
            fields = _fields(record["checkpoint"], _CHECKPOINT_FIELDS, '"checkpoint"')
            verifier.checkpoint(
                audit_pb2.SignedCheckpoint(
                    checkpoint=_base64(fields["checkpoint"], "the signed checkpoint"),
                    key_id=_text(fields["key_id"], '"key_id"'),
                    algorithm=_text(fields["algorithm"], '"algorithm"'),
                    signature=_base64(fields["signature"], "the signature"),
                )
            )
        elif keys == _FRONTIER_LINE:
            fields = _fields(record["frontier"], _FRONTIER_FIELDS, '"frontier"')
            hashes = fields["hashes"]
            if not isinstance(hashes, list):
                raise _LayoutError('the frontier\'s "hashes" is not a list')
            verifier.start_at(
                _integer(fields["tree_size"], '"tree_size"'),
                [_digest(digest, "a frontier hash") for digest in hashes],
            )
        elif keys == _ENTRY_LINE:
            entry = record["entry"]
            if not isinstance(entry, dict):
                raise _LayoutError('"entry" is not an object')
            verifier.entry(
                _integer(record["index"], '"index"'),
                canonical_json(entry),
                _digest(record["leaf_hash"], '"leaf_hash"'),
                _integer(entry.get("index"), 'the entry\'s "index"'),
            )
        else:
            if keys is None:
                raise _LayoutError("it is not a JSON object")
            raise _LayoutError(
                f"it has {', '.join(sorted(keys)) or 'no keys'}, not exactly the keys of an "
                "entry line (entry, index, leaf_hash), a checkpoint line (checkpoint) or a "
                "frontier line (frontier)"
            )
    except VerificationError:
        raise
    except _LayoutError as exc:
        raise VerificationError(
            position, f"line {number} is not a valid export line: {exc}"
        ) from None
    except (ValueError, KeyError, TypeError) as exc:
        raise VerificationError(
            position, f"line {number} is not a valid export line ({exc.__class__.__name__})"
        ) from None


class _LayoutError(ValueError):
    """A line that is valid JSON but not exactly a line audit/export.py writes."""


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    record = dict(pairs)
    if len(record) != len(pairs):
        seen: set[str] = set()
        for key, _ in pairs:
            if key in seen:
                raise _LayoutError(f"it gives the key {key!r} twice")
            seen.add(key)
    return record


def _exact_int(text: str) -> int:
    value = int(text)
    if str(value) != text:  # "-0"
        raise _LayoutError(f"the number {text} does not read back as written")
    return value


def _exact_float(text: str) -> float:
    # A number that does not survive the round trip (0.10000000000000000001, 1e999) is
    # one value to this verifier and another to a reader with more precision.
    value = float(text)
    if repr(value) != text:
        raise _LayoutError(f"the number {text} does not read back as written")
    return value


def _no_constant(text: str) -> object:
    raise _LayoutError(f"{text} is not JSON")


_STRICT_JSON = json.JSONDecoder(
    object_pairs_hook=_unique_keys,
    parse_int=_exact_int,
    parse_float=_exact_float,
    parse_constant=_no_constant,
)


def _fields(value: object, keys: frozenset[str], name: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise _LayoutError(f"{name} is not an object")
    if value.keys() != keys:
        raise _LayoutError(
            f"{name} has {', '.join(sorted(value)) or 'no keys'}, "
            f"not exactly {', '.join(sorted(keys))}"
        )
    return value


def _integer(value: object, name: str) -> int:
    if type(value) is not int:  # not a bool, a float or a string of digits
        raise _LayoutError(f"{name} is not an integer")
    return value


def _text(value: object, name: str) -> str:
    if not isinstance(value, str):
        raise _LayoutError(f"{name} is not a string")
    return value


def _digest(value: object, name: str) -> bytes:
    text = _text(value, name)
    try:
        digest = bytes.fromhex(text)
    except ValueError:
        digest = b""
    if len(text) != 64 or len(digest) != 32:  # fromhex() skips white space
        raise _LayoutError(f"{name} is not a SHA-256 digest in 64 hex digits")
    return digest


def _base64(value: object, name: str) -> bytes:
    text = _text(value, name)
    try:
        decoded = base64.b64decode(text, validate=True)
    except ValueError:
        decoded = None
    if decoded is None or base64.b64encode(decoded).decode() != text:
        raise _LayoutError(f"{name} is not canonical base64")
    return decoded
