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
import json
from dataclasses import dataclass
from typing import Any

from audit.events import AuditEvent, SubjectId
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


def canonical_json(obj: Any) -> bytes:
    """The one serialisation whose bytes the log hashes."""
    return _CANONICAL.encode(obj).encode()


def format_time(moment: dt.datetime) -> str:
    """RFC 3339, UTC, microseconds: 2025-01-31T08:00:00.000000Z (sorts as it reads)."""
    return moment.astimezone(dt.UTC).isoformat(timespec="microseconds")[:26] + "Z"


def parse_time(text: str) -> dt.datetime:
    """The inverse of format_time()."""
    return dt.datetime.strptime(text, "%Y-%m-%dT%H:%M:%S.%fZ").replace(tzinfo=dt.UTC)


@dataclass(frozen=True, slots=True)
class PreparedEntry:
    """An entry without its index: all of it that can be computed outside the writer's lock.

    The canonical JSON of everything but "index" and "subject_sealed" is already encoded, in
    the three runs of keys that sort before, between and after those two, so sealing only
    has to splice them together (the result is byte for byte canonical_json of the entry).
    """

    appended_at: dt.datetime
    subject: SubjectId | None
    before_index: bytes  # "caller" .. "grant_id", without braces
    before_sealed: bytes  # "issuer" .. "subject_ref"
    after_sealed: bytes  # "time"
    columns: tuple[Any, ...]  # QUERY_COLUMNS values


@dataclass(frozen=True, slots=True)
class SealedEntry:
    """An entry with its index, leaf bytes and leaf hash, ready to store."""

    index: int
    appended_at: dt.datetime
    leaf: bytes
    leaf_hash: bytes
    row: tuple[Any, ...]  # audit_entries values, in ROW_COLUMNS order


def prepare(event: AuditEvent, keys: LogKeys, appended_at: dt.datetime) -> PreparedEntry:
    """Flatten `event` into an entry without its index; the subject becomes its pseudonym."""
    subject = event.subject
    before_index = {
        "caller": event.caller,
        "certificate_type": event.certificate_type,
        "change_after": event.change_after,
        "change_before": event.change_before,
        "consent_ref": event.consent_ref,
        "delegation_id": event.delegation_id,
        "document_digest": event.document_digest,
        "event": event.event.value,
        "fields_released": sorted(event.fields_released),
        "grant_id": event.grant_id,
    }
    before_sealed = {
        "issuer": event.issuer,
        "latency_us": int(event.latency_us),
        "matter_id": event.matter_id,
        "method": event.method,
        "operator_id": event.operator_id,
        "outcome": event.outcome.value,
        "purpose": event.purpose,
        "reason": event.reason,
        "request_id": event.request_id,
        "requester_department": event.requester_department,
        "role": event.role,
        "status": event.status,
        "subject_ref": keys.subject_ref(subject) if subject is not None else "",
    }
    time = format_time(appended_at)
    return PreparedEntry(
        appended_at=appended_at,
        subject=subject,
        before_index=_members(before_index),
        before_sealed=_members(before_sealed),
        after_sealed=_members({"time": time}),
        columns=(
            time,
            before_index["event"],
            before_sealed["outcome"],
            before_sealed["subject_ref"],
            before_sealed["requester_department"],
            before_sealed["issuer"],
            event.certificate_type,
            before_sealed["purpose"],
        ),
    )


def seal(prepared: PreparedEntry, index: int, keys: LogKeys) -> SealedEntry:
    """Give `prepared` its index, seal its subject to that index, and compute its leaf."""
    subject = prepared.subject
    sealed = base64.b64encode(keys.seal(subject, index)) if subject is not None else b""
    leaf = b"".join(
        (
            b"{",
            prepared.before_index,
            b',"index":%d,' % index,
            prepared.before_sealed,
            b',"subject_sealed":"%s",' % sealed,
            prepared.after_sealed,
            b"}",
        )
    )
    digest = leaf_hash(leaf)
    return SealedEntry(
        index=index,
        appended_at=prepared.appended_at,
        leaf=leaf,
        leaf_hash=digest,
        row=(index, leaf, digest, *prepared.columns),
    )


def _members(part: dict[str, Any]) -> bytes:
    return canonical_json(part)[1:-1]
