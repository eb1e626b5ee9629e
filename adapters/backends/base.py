"""The backend interface: how an adapter node reads one record from a department's own systems.

A backend answers one question — "the record of this certificate type about this subject" —
and says which certificate types and fields it can answer for. Everything else (who may ask,
which fields leave, signing) is the node's business, so a backend stays small and a third
party can write one against this module alone.

A backend class is built from the options in the node's config by `from_options`; each
built-in backend parses them into a frozen config dataclass of its own that refuses unknown
keys. Third-party backends register under the entry-point group "exchange.adapters".
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from audit.events import SubjectId


@dataclass(frozen=True)
class Record:
    """One record as the department holds it, already in the exchange's vocabulary.

    `issued_at` and `valid_until` are timezone-aware UTC; `valid_until` None means no end.
    `fields` holds every field the backend can give for this record (field name -> value);
    a field the record has no value for is absent, never an empty string.
    """

    document_id: str
    issued_at: datetime
    valid_until: datetime | None
    fields: dict[str, str]


class Backend(ABC):
    """Reads records of the certificate types a department issues."""

    @classmethod
    @abstractmethod
    def from_options(cls, options: Mapping[str, Any], base_dir: Path) -> Backend:
        """Build the backend from its config options; relative paths resolve against base_dir.

        Raises ValueError naming any unknown or malformed option.
        """

    @abstractmethod
    async def fetch(self, certificate_type: str, subject: SubjectId) -> Record | None:
        """The record of `certificate_type` about `subject`, or None when there is none.

        Called only with a certificate type listed by `served_types()`. Must not block the
        event loop.
        """

    @abstractmethod
    def served_types(self) -> dict[str, tuple[str, ...]]:
        """Certificate type code -> the field names a record of that type can carry."""

    async def close(self) -> None:  # noqa: B027 - optional hook, nothing to release by default
        """Release connections and files; the backend is not used afterwards."""
