"""How values from a department's store become Document values: UTC instants and strings.

Departments keep dates as DATE, DATETIME or ISO 8601 text, with or without a zone; a Document
carries aware UTC instants. Field values of any scalar type become strings.
"""

from __future__ import annotations

import json
from datetime import UTC, date, datetime, time, tzinfo
from decimal import Decimal


def to_utc(value: object, zone: tzinfo, what: str) -> datetime:
    """An aware UTC datetime from a datetime, date or ISO 8601 string.

    Values without a zone are read in `zone` (the backend's configured `timezone`); a bare
    date is midnight in that zone. Raises ValueError naming `what` for anything else.
    """
    if isinstance(value, datetime):
        moment = value
    elif isinstance(value, date):
        moment = datetime.combine(value, time())
    elif isinstance(value, str):
        try:
            moment = datetime.fromisoformat(value.strip())
        except ValueError as exc:
            raise ValueError(f"{what}: {value!r} is not an ISO 8601 date or time") from exc
    else:
        raise ValueError(f"{what}: expected a date or time, got {type(value).__name__}")
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=zone)
    return moment.astimezone(UTC)


def optional_utc(value: object, zone: tzinfo, what: str) -> datetime | None:
    """Like `to_utc`, but NULL / empty means "no date" (e.g. valid without end)."""
    if value is None or (isinstance(value, str) and not value.strip()):
        return None
    return to_utc(value, zone, what)


def render(value: object) -> str | None:
    """The string form of a field value; None when the record has no value for the field."""
    if value is None:
        return None
    if isinstance(value, str):
        return value if value.strip() else None
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, datetime | date | time):
        return value.isoformat()
    if isinstance(value, int | float | Decimal):
        return str(value)
    if isinstance(value, bytes):
        return value.hex()
    # Nested JSON (lists, objects) stays JSON so nothing is lost or reformatted ambiguously.
    return json.dumps(value, ensure_ascii=False, sort_keys=True, default=str)
