"""What one audit entry is: the AuditEvent turned into a flat JSON object, and its leaf bytes.

The leaf is the entry's canonical JSON (keys sorted, no white space, UTF-8); its RFC 6962
leaf hash is what the Merkle tree, receipts and exports commit to. The subject identifier is
never in the entry: `subject_ref` is its HMAC pseudonym, `subject_sealed` its AES-GCM
ciphertext bound to the entry's index.

Building an entry happens in two steps because the index is only known inside the writer's
lock: `prepare()` does everything that does not depend on it, `seal()` the rest.
"""

from __future__ import annotations

import base64
import datetime as dt
import functools
import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from audit.events import AuditEvent, EventKind, Outcome, SubjectId
from audit.keys import LogKeys
from audit.merkle import leaf_hash

# Entry keys, in their canonical (sorted) order.
ENTRY_KEYS = (
    "caller",
    "certificate_type",
    "change_after",
    "change_before",
    "consent_ref",
    "delegation_id",
    "document_digest",
    "event",
    "fields_released",
    "grant_id",
    "index",
    "issuer",
    "latency_us",
    "matter_id",
    "method",
    "operator_id",
    "outcome",
    "purpose",
    "reason",
    "request_id",
    "requester_department",
    "role",
    "status",
    "subject_ref",
    "subject_sealed",
    "time",
)

# Entry keys copied to indexed columns of audit_entries for queries.
QUERY_COLUMNS = (
    "time",
    "event",
    "outcome",
    "subject_ref",
    "requester_department",
    "issuer",
    "certificate_type",
    "purpose",
)


# audit_entries columns in the order SealedEntry.row gives them.
ROW_COLUMNS = ("idx", "leaf", "leaf_hash", *QUERY_COLUMNS)

# Exactly json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False), without
# building a new encoder for every call as json.dumps does for non-default arguments.
_CANONICAL = json.JSONEncoder(sort_keys=True, separators=(",", ":"), ensure_ascii=False)

# The C function json.dumps(ensure_ascii=False) quotes and escapes every string with.
_STRING: Callable[[str], str] = json.encoder.encode_basestring


def canonical_json(obj: Any) -> bytes:
    """The one serialisation whose bytes the log hashes."""
    return _CANONICAL.encode(obj).encode()


def format_time(moment: dt.datetime) -> str:
    """RFC 3339, UTC, microseconds: 2025-01-31T08:00:00.000000Z (sorts as it reads)."""
    return moment.astimezone(dt.UTC).isoformat(timespec="microseconds")[:26] + "Z"


def parse_time(text: str) -> dt.datetime:
    """The inverse of format_time()."""
    return dt.datetime.strptime(text, "%Y-%m-%dT%H:%M:%S.%fZ").replace(tzinfo=dt.UTC)


def time_now() -> str:
    """format_time() of the current time, cheaply (appends ask for it thousands of times a
    second, and the text up to the second changes only once a second)."""
    micros = time.time_ns() // 1000
    return f"{_second_text(micros // 1_000_000)}.{micros % 1_000_000:06d}Z"


@functools.lru_cache(maxsize=4)
def _second_text(second: int) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second))


@dataclass(slots=True)
class PreparedEntry:
    """An entry without its index: all of it that can be computed outside the writer's lock.

    The canonical JSON of everything but "index" and "subject_sealed" is already encoded, in
    the three runs of keys that sort before, between and after those two, so sealing only
    has to splice them together (the result is byte for byte canonical_json of the entry).
    Not frozen: frozen dataclasses cost twice as much to build, and one is built per append.
    """

    subject: SubjectId | None
    before_index: bytes  # "caller" .. "grant_id", without braces
    before_sealed: bytes  # "issuer" .. "subject_ref"
    after_sealed: bytes  # "time"
    columns: tuple[Any, ...]  # QUERY_COLUMNS values


@dataclass(slots=True)
class SealedEntry:
    """An entry with its index, leaf bytes and leaf hash, ready to store."""

    index: int
    leaf: bytes
    leaf_hash: bytes
    row: tuple[Any, ...]  # audit_entries values, in ROW_COLUMNS order


# Enum values as json encodes them, looked up rather than encoded per entry.
_EVENTS = {kind: _STRING(kind.value) for kind in EventKind}
_OUTCOMES = {outcome: _STRING(outcome.value) for outcome in Outcome}


def prepare(event: AuditEvent, keys: LogKeys, appended_at: str) -> PreparedEntry:
    """Flatten `event`, appended at `appended_at` (format_time() text), into an entry without
    its index; the subject becomes its pseudonym."""
    subject = event.subject
    subject_ref = keys.subject_ref(subject) if subject is not None else ""
    try:
        encoded = _encode_members(event, subject_ref, appended_at, _STRING)
    except TypeError:  # a value that is not a string: encode it as json.dumps would
        encoded = _encode_members(event, subject_ref, appended_at, _CANONICAL.encode)
    return PreparedEntry(
        subject,
        *encoded,
        (
            appended_at,
            event.event.value,
            event.outcome.value,
            subject_ref,
            query_text(event.requester_department),
            query_text(event.issuer),
            query_text(event.certificate_type),
            query_text(event.purpose),
        ),
    )


def query_text(value: str) -> str:
    """`value` as a query column holds it: PostgreSQL's text cannot hold NUL, so each one is
    stored as U+FFFD. The entry itself keeps the value as it came: a refused lookup's
    purpose, say, with a NUL in it, is recorded exactly and still found by its other columns.
    """
    return value.replace("\x00", "\ufffd")


def _encode_members(
    event: AuditEvent, subject_ref: str, appended_at: str, string: Callable[[Any], str]
) -> tuple[bytes, bytes, bytes]:
    """The three runs of canonical JSON members of PreparedEntry, keys in ENTRY_KEYS order.

    Joining each key with its value encoded by json's own string encoder gives the bytes
    canonical_json() would, at a third of the cost of building and encoding dicts (this is
    the largest cost of an append); tests/audit/test_entry.py checks the two agree.
    """
    before_index = "".join(
        (
            '"caller":',
            string(event.caller),
            ',"certificate_type":',
            string(event.certificate_type),
            ',"change_after":',
            string(event.change_after),
            ',"change_before":',
            string(event.change_before),
            ',"consent_ref":',
            string(event.consent_ref),
            ',"delegation_id":',
            string(event.delegation_id),
            ',"document_digest":',
            string(event.document_digest),
            ',"event":',
            _EVENTS[event.event],
            ',"fields_released":[',
            ",".join(map(string, sorted(event.fields_released))),
            '],"grant_id":',
            string(event.grant_id),
        )
    )
    before_sealed = "".join(
        (
            '"issuer":',
            string(event.issuer),
            ',"latency_us":',
            str(int(event.latency_us)),
            ',"matter_id":',
            string(event.matter_id),
            ',"method":',
            string(event.method),
            ',"operator_id":',
            string(event.operator_id),
            ',"outcome":',
            _OUTCOMES[event.outcome],
            ',"purpose":',
            string(event.purpose),
            ',"reason":',
            string(event.reason),
            ',"request_id":',
            string(event.request_id),
            ',"requester_department":',
            string(event.requester_department),
            ',"role":',
            string(event.role),
            ',"status":',
            string(event.status),
            ',"subject_ref":',
            string(subject_ref),
        )
    )
    after_sealed = '"time":' + string(appended_at)
    return before_index.encode(), before_sealed.encode(), after_sealed.encode()


def seal(prepared: PreparedEntry, index: int, keys: LogKeys) -> SealedEntry:
    """Give `prepared` its index, seal its subject to that index, and compute its leaf."""
    subject = prepared.subject
    sealed = base64.b64encode(keys.seal(subject, index)) if subject is not None else b""
    leaf = b'{%s,"index":%d,%s,"subject_sealed":"%s",%s}' % (
        prepared.before_index,
        index,
        prepared.before_sealed,
        sealed,
        prepared.after_sealed,
    )
    digest = leaf_hash(leaf)
    return SealedEntry(index, leaf, digest, (index, leaf, digest, *prepared.columns))
