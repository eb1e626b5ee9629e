"""Sample audit events for the audit tests (lookups about synthetic residents), and a database
that refuses new rows."""

from __future__ import annotations

import contextlib
import datetime as dt
from collections.abc import Iterator

import sqlalchemy as sa

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


# SQL that makes a database refuse new rows in {table}, and SQL that undoes it, per dialect.
_REFUSE_INSERTS = {
    "sqlite": (
        [
            "CREATE TRIGGER refuse_{table} BEFORE INSERT ON {table} "
            "BEGIN SELECT RAISE(ABORT, 'no space left on device'); END"
        ],
        ["DROP TRIGGER refuse_{table}"],
    ),
    "postgresql": (
        [
            "CREATE FUNCTION refuse_{table}() RETURNS trigger LANGUAGE plpgsql AS "
            "$$ BEGIN RAISE EXCEPTION 'no space left on device'; END $$",
            "CREATE TRIGGER refuse_{table} BEFORE INSERT ON {table} "
            "FOR EACH ROW EXECUTE FUNCTION refuse_{table}()",
        ],
        ["DROP TRIGGER refuse_{table} ON {table}", "DROP FUNCTION refuse_{table}()"],
    ),
}


@contextlib.contextmanager
def inserts_refused(engine: sa.Engine, table: str) -> Iterator[None]:
    """While inside, the database refuses every new row in `table`, as a full disk would."""
    refuse, undo = _REFUSE_INSERTS[engine.dialect.name]
    with engine.begin() as conn:
        for statement in refuse:
            conn.exec_driver_sql(statement.format(table=table))
    try:
        yield
    finally:
        with engine.begin() as conn:
            for statement in undo:
                conn.exec_driver_sql(statement.format(table=table))
