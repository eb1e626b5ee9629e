"""Sample audit events for the audit tests: lookups about synthetic residents."""

from __future__ import annotations

import datetime as dt

from audit.events import AuditEvent, EventKind, Outcome, SubjectId
from exchange.subject import make_resident_id

# What the `served` AuditService fixture (tests/audit/conftest.py) holds.
MCA_ENTRIES = 40  # granted lookups by civil affairs, subjects 0..39
HRSS_REFUSED = 10  # refused lookups by social security about subject 3


def resident(number: int) -> SubjectId:
    """A valid synthetic resident ID, one per number."""
    birth = dt.date(1960, 1, 1) + dt.timedelta(days=number % 20000)
    return SubjectId("RESIDENT_ID", make_resident_id("110101", birth, number % 1000))


def lookup_event(number: int, **overrides: object) -> AuditEvent:
    """A granted lookup by civil affairs about resident `number`."""
    values: dict[str, object] = {
        "event": EventKind.LOOKUP,
        "outcome": Outcome.GRANTED,
        "status": "OK",
        "method": "/exchange.v1.LookupService/Lookup",
        "caller": "mca-counter-1",
        "requester_department": "MCA",
        "role": "department",
        "operator_id": f"clerk-{number % 7}",
        "subject": resident(number),
        "certificate_type": "resident_identity",
        "issuer": "PSB",
        "fields_released": ("name", "birth_date"),
        "purpose": "birth_registration",
        "matter_id": f"MCA-2024-{number:05d}",
        "request_id": f"req-{number}",
        "latency_us": 1200 + number,
        "document_digest": f"{number:064x}",
    }
    values.update(overrides)
    return AuditEvent(**values)  # type: ignore[arg-type]
