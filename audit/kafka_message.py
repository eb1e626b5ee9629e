"""What goes on the Kafka topic for one audit entry: an `exchange.v1.AuditEntry`.

The message is built from the entry's leaf alone (the canonical JSON the log stores), so
it carries exactly what the log committed to: the subject stays a pseudonym (`subject_ref`)
and, inside `leaf_data`, a sealed ciphertext; `subject` is never filled in. Consumers can
check `leaf_hash` against a receipt or an inclusion proof, and re-derive every field from
`leaf_data`.
"""

from __future__ import annotations

import datetime as dt
import json
from typing import Any

from audit.merkle import leaf_hash
from exchange.v1 import audit_pb2

# Leaf keys copied to the message field of the same name as they are.
_TEXT_KEYS = (
    "event",
    "method",
    "caller",
    "requester_department",
    "role",
    "operator_id",
    "subject_ref",
    "certificate_type",
    "issuer",
    "purpose",
    "matter_id",
    "grant_id",
    "consent_ref",
    "delegation_id",
    "status",
    "reason",
    "request_id",
    "document_digest",
    "change_before",
    "change_after",
)


def message_key(index: int) -> bytes:
    """The record key: the entry index in decimal ASCII."""
    return str(index).encode()


def audit_entry_message(index: int, leaf: bytes) -> audit_pb2.AuditEntry:
    """The AuditEntry for the entry at `index` whose canonical JSON is `leaf`.

    Raises ValueError when the leaf is not an entry object or names another index: the relay
    must not publish under a key that disagrees with the payload.
    """
    entry: Any = json.loads(leaf)
    if not isinstance(entry, dict):
        raise ValueError(f"audit entry {index}: leaf is not a JSON object")
    if entry.get("index") != index:
        raise ValueError(f"audit entry {index}: leaf names index {entry.get('index')!r}")
    message = audit_pb2.AuditEntry(
        index=index,
        outcome=audit_pb2.Outcome.Value(
            str(entry.get("outcome", "")).upper() or "OUTCOME_UNSPECIFIED"
        ),
        latency_us=int(entry.get("latency_us", 0)),
        fields_released=[str(name) for name in entry.get("fields_released", ())],
        leaf_data=leaf,
        leaf_hash=leaf_hash(leaf),
    )
    for key in _TEXT_KEYS:
        setattr(message, key, str(entry.get(key, "")))
    if entry.get("time"):
        # fromisoformat reads the log's RFC 3339 "…Z" times far faster than strptime.
        message.time.FromDatetime(dt.datetime.fromisoformat(str(entry["time"])))
    return message


def encode(index: int, leaf: bytes) -> tuple[bytes, bytes]:
    """(key, value) of the record that publishes entry `index`."""
    return message_key(index), audit_entry_message(index, leaf).SerializeToString()
