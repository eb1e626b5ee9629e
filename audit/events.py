"""What the rest of the exchange hands to the audit log: one `AuditEvent` per outcome.

The hub, the registry and the audit service describe what happened as an AuditEvent and
`await log.append(event)`; the log pseudonymises and encrypts the subject, assigns the
index, makes it durable, and returns the receipt the caller gets. A registry change is made
through `await log.append_change(change)`, in the transaction that records it. Nothing
outside audit/ knows how entries are stored or hashed.
"""

from __future__ import annotations

import enum
from collections.abc import Callable
from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

from exchange.v1 import lookup_pb2

if TYPE_CHECKING:
    import sqlalchemy as sa


class Outcome(enum.Enum):
    GRANTED = "granted"  # data released, change applied, query answered
    REFUSED = "refused"  # identity or policy said no
    FAILED = "failed"  # source down, integrity failure, internal error


class EventKind(enum.Enum):
    LOOKUP = "lookup"
    REGISTRY_CHANGE = "registry_change"
    AUDIT_QUERY = "audit_query"
    # Refused before any handler ran: unknown or revoked identity, wrong role.
    CALL_REFUSED = "call_refused"


@dataclass(frozen=True, slots=True)
class SubjectId:
    """A subject as the caller named it; the log never stores `id` in clear."""

    kind: str  # SubjectKind name, e.g. "RESIDENT_ID"
    id: str


@dataclass(frozen=True, slots=True)
class AuditEvent:
    event: EventKind
    outcome: Outcome
    status: str  # gRPC status code name: "OK", "PERMISSION_DENIED", ...
    method: str = ""  # "/exchange.v1.LookupService/Lookup"
    caller: str = ""  # certificate common name
    requester_department: str = ""
    role: str = ""
    operator_id: str = ""
    subject: SubjectId | None = None
    certificate_type: str = ""
    issuer: str = ""
    fields_released: tuple[str, ...] = ()
    purpose: str = ""
    matter_id: str = ""
    grant_id: str = ""
    consent_ref: str = ""
    delegation_id: str = ""
    reason: str = ""  # why refused or failed (the public message)
    request_id: str = ""
    latency_us: int = 0
    document_digest: str = ""  # sha256 hex of the released payload
    change_before: str = ""  # registry changes: JSON of the record before / after
    change_after: str = ""


class AuditSink(Protocol):
    """Where events go. `append` returns once the entry is durable."""

    async def append(self, event: AuditEvent) -> lookup_pb2.Receipt: ...

    async def append_change(
        self, change: Callable[[sa.Connection], AuditEvent]
    ) -> lookup_pb2.Receipt:
        """Run `change` on a connection to the sink's database (the registry's), in the
        transaction that records the event it returns: both are committed, or neither."""
        ...

    def under_way(self) -> AbstractContextManager[object]:
        """Held around work that will append when it ends (a lookup), so that the log can
        let a commit wait a moment for it to join (group commit)."""
        ...
