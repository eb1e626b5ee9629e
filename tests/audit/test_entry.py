"""An entry's leaf is exactly the canonical JSON of its fields, whatever the fields hold.

Any tool re-canonicalising an exported entry with json.dumps(sort_keys=True,
separators=(",", ":"), ensure_ascii=False) must get the bytes the log hashed.
"""

from __future__ import annotations

import base64
import datetime as dt
import json
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from audit import entry
from audit.config import create_keys
from audit.events import AuditEvent, EventKind, Outcome, SubjectId
from audit.keys import LogKeys

TEXT = st.text(st.characters(exclude_categories=("Cs",)), max_size=30)  # valid UTF-8 only


@pytest.fixture(scope="module")
def keys(tmp_path_factory: pytest.TempPathFactory) -> LogKeys:
    directory: Path = tmp_path_factory.mktemp("entry-keys")
    return LogKeys.load(create_keys(directory))


def canonical(event: AuditEvent, keys: LogKeys, index: int, time: str, leaf: bytes) -> bytes:
    """The entry as a dict, serialised the canonical way; subject_sealed taken from `leaf`
    (it holds a random nonce)."""
    sealed = json.loads(leaf)["subject_sealed"]
    subject = event.subject
    return json.dumps(
        {
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
            "index": index,
            "issuer": event.issuer,
            "latency_us": event.latency_us,
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
            "subject_sealed": sealed,
            "time": time,
        },
        sort_keys=True,
        separators=(",", ":"),
        ensure_ascii=False,
    ).encode()


EVENTS = st.builds(
    AuditEvent,
    event=st.sampled_from(EventKind),
    outcome=st.sampled_from(Outcome),
    status=TEXT,
    method=TEXT,
    caller=TEXT,
    requester_department=TEXT,
    role=TEXT,
    operator_id=TEXT,
    subject=st.none() | st.builds(SubjectId, kind=st.just("RESIDENT_ID"), id=TEXT),
    certificate_type=TEXT,
    issuer=TEXT,
    fields_released=st.lists(TEXT, max_size=4).map(tuple),
    purpose=TEXT,
    matter_id=TEXT,
    grant_id=TEXT,
    consent_ref=TEXT,
    delegation_id=TEXT,
    reason=TEXT,
    request_id=TEXT,
    latency_us=st.integers(0, 10**12),
    document_digest=TEXT,
    change_before=TEXT,
    change_after=TEXT,
)


@settings(max_examples=200, deadline=None)
@given(event=EVENTS, index=st.integers(0, 2**40))
def test_the_leaf_is_the_canonical_json_of_the_entry(
    keys: LogKeys, event: AuditEvent, index: int
) -> None:
    time = entry.time_now()
    sealed = entry.seal(entry.prepare(event, keys, time), index, keys)

    assert sealed.leaf == canonical(event, keys, index, time, sealed.leaf)
    opened = json.loads(sealed.leaf)
    assert tuple(opened) == entry.ENTRY_KEYS
    assert opened["index"] == index
    if event.subject is not None:
        assert keys.unseal(base64.b64decode(opened["subject_sealed"]), index) == event.subject


def test_a_value_that_is_not_a_string_is_encoded_as_json_would(keys: LogKeys) -> None:
    event = AuditEvent(event=EventKind.LOOKUP, outcome=Outcome.GRANTED, status=None)  # type: ignore[arg-type]
    sealed = entry.seal(entry.prepare(event, keys, entry.time_now()), 3, keys)
    assert json.loads(sealed.leaf)["status"] is None
    assert b'"status":null' in sealed.leaf


def test_time_now_is_format_time_of_the_clock() -> None:
    before = dt.datetime.now(dt.UTC)
    text = entry.time_now()
    after = dt.datetime.now(dt.UTC)
    assert len(text) == 27 and text.endswith("Z")
    assert entry.format_time(before) <= text <= entry.format_time(after)
    assert entry.format_time(entry.parse_time(text)) == text
