"""How values from a department's store become Document values: UTC instants and strings.

Departments keep dates as DATE, DATETIME or ISO 8601 text, with or without a zone; a Document
carries aware UTC instants. Field values of any scalar type become strings.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, tzinfo
from decimal import Decimal

from adapters.backends.base import Record
from adapters.backends.options import OptionReader


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


@dataclass(frozen=True)
class RecordLayout:
    """Where a record's parts are in one row or object of a department's store: the keys (or
    columns) of its document id, issue time, end of validity and fields, and the zone of
    times written without one. Every backend reads it from the same options, named with
    its own word for a key ("document_id_key", "document_id_column", …)."""

    document_id: str
    issued_at: str
    valid_until: str | None
    fields: dict[str, str]  # field name -> key
    zone: tzinfo

    @classmethod
    def read(cls, reader: OptionReader, word: str) -> RecordLayout:
        """The layout in `reader`'s options: document_id_<word>, issued_at_<word>,
        valid_until_<word> (optional), fields and timezone."""
        return cls(
            document_id=reader.text(f"document_id_{word}"),
            issued_at=reader.text(f"issued_at_{word}"),
            valid_until=reader.optional_text(f"valid_until_{word}"),
            fields=reader.string_map("fields"),
            zone=reader.zone(),
        )

    @functools.cached_property
    def keys(self) -> tuple[str, ...]:
        """Every key the layout reads, once each, in the order the options name them."""
        optional = (self.valid_until,) if self.valid_until is not None else ()
        return tuple(
            dict.fromkeys((self.document_id, self.issued_at, *optional, *self.fields.values()))
        )

    def record(self, value_of: Callable[[str], object], where: str) -> Record:
        """The Record in one row or object, `value_of(key)` giving each value (None when
        absent). ValueError names `where` and what is missing or malformed: a record with no
        document id has nothing to sign."""
        number = render(value_of(self.document_id))
        if number is None:
            raise ValueError(f"{where}: the record has no {self.document_id}")
        until = (
            optional_utc(value_of(self.valid_until), self.zone, where) if self.valid_until else None
        )
        rendered = {name: render(value_of(key)) for name, key in self.fields.items()}
        return Record(
            document_id=number,
            issued_at=to_utc(value_of(self.issued_at), self.zone, where),
            valid_until=until,
            fields={name: value for name, value in rendered.items() if value is not None},
        )
