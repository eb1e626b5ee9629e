"""The files backend: records from CSV files or JSON files (an array of objects).

Every file is read once when the node starts and kept in memory, keyed by subject id; a
malformed file stops the node at start with the file and row named, not at the first lookup.
When one subject has several records of a type, the one issued last wins.

    [backend]
    kind = "files"

    [certificate_types.business_licence]
    path = "data/licences.csv"          # relative paths: from the config file's folder
    format = "csv"                      # optional: "csv" or "json" (default: from the suffix)
    encoding = "utf-8"                  # optional (default UTF-8; a byte-order mark is skipped)
    subject_key = "uscc"
    document_id_key = "licence_no"
    issued_at_key = "issued"
    valid_until_key = "expires"         # optional; empty means valid without end
    timezone = "Asia/Shanghai"          # optional (default UTC): zone of dates written without one
    fields = { company_name = "name", legal_representative = "legal_rep" }
"""

from __future__ import annotations

import csv
import json
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from adapters.backends.base import Backend, Record
from adapters.backends.options import OptionReader
from adapters.backends.values import RecordLayout, render
from audit.events import SubjectId

_TYPE_KEYS = (
    "path",
    "format",
    "encoding",
    "subject_key",
    "document_id_key",
    "issued_at_key",
    "valid_until_key",
    "timezone",
    "fields",
)
FORMATS = ("csv", "json")


@dataclass(frozen=True)
class FileCertificateType:
    """Where one certificate type's records are and which key holds what."""

    code: str
    path: Path
    format: str
    encoding: str
    subject_key: str
    layout: RecordLayout  # keys in the file

    @classmethod
    def from_dict(cls, code: str, d: Mapping[str, Any], base_dir: Path) -> FileCertificateType:
        """Parse `[certificate_types.<code>]`; ValueError names any unknown or missing key."""
        where = f"certificate_types.{code}"
        reader = OptionReader(d, where, _TYPE_KEYS)
        path = reader.path("path", base_dir)
        file_format = reader.text("format", default=path.suffix.lstrip(".").lower())
        if file_format not in FORMATS:
            raise ValueError(f"{where}.format: expected one of {', '.join(FORMATS)}")
        return cls(
            code=code,
            path=path,
            format=file_format,
            encoding=reader.text("encoding", default="utf-8-sig"),
            subject_key=reader.text("subject_key"),
            layout=RecordLayout.read(reader, "key"),
        )

    def load(self) -> dict[str, Record]:
        """Every record in the file by subject id; ValueError names the file and row at fault."""
        records: dict[str, Record] = {}
        keys_seen: set[str] = set()
        number = 0
        try:
            for number, row in enumerate(self._rows(), start=1):
                keys_seen.update(row)
                subject_id, record = self._record(row, f"{self.path} record {number}")
                current = records.get(subject_id)
                if current is None or record.issued_at >= current.issued_at:
                    records[subject_id] = record
        except (csv.Error, UnicodeDecodeError) as exc:
            raise ValueError(f"{self.path} after record {number}: {exc}") from exc
        # A key no record has is a misspelt one: left alone, a misspelt valid_until_key
        # would release expired records as valid without end.
        missing = [key for key in self._configured_keys() if key not in keys_seen]
        if records and missing:
            raise ValueError(f"{self.path}: no record has {', '.join(missing)}")
        return records

    def _configured_keys(self) -> list[str]:
        return list(dict.fromkeys((self.subject_key, *self.layout.keys)))

    def _rows(self) -> Iterator[Mapping[str, Any]]:
        with self.path.open(encoding=self.encoding, newline="") as stream:
            if self.format == "csv":
                rows = csv.DictReader(stream)
                header = rows.fieldnames or ()
                missing = [key for key in self._configured_keys() if key not in header]
                if missing:
                    raise ValueError(f"{self.path}: no column {', '.join(missing)}")
                yield from rows
                return
            try:
                document = json.load(stream)
            except json.JSONDecodeError as exc:
                raise ValueError(f"{self.path}: not valid JSON: {exc}") from exc
        if not isinstance(document, list) or not all(isinstance(o, dict) for o in document):
            raise ValueError(f"{self.path}: expected a JSON array of objects")
        yield from document

    def _record(self, row: Mapping[str, Any], where: str) -> tuple[str, Record]:
        subject_id = render(row.get(self.subject_key))
        if subject_id is None:
            raise ValueError(f"{where}: the record has no {self.subject_key}")
        record = self.layout.record(row.get, where)
        # validate_subject upper-cases ids (a resident ID may end in "x"); match its spelling.
        return subject_id.strip().upper(), record


@dataclass(frozen=True)
class FileBackendConfig:
    """The `[backend]` table (kind = "files") and the certificate types it serves."""

    certificate_types: dict[str, FileCertificateType]

    @classmethod
    def from_dict(cls, d: Mapping[str, Any], base_dir: Path) -> FileBackendConfig:
        """Parse the options; relative file paths are taken from `base_dir`."""
        reader = OptionReader(d, "backend", ("certificate_types",))
        types = reader.table("certificate_types")
        if not types:
            raise ValueError("certificate_types: configure at least one certificate type")
        return cls(
            certificate_types={
                code: FileCertificateType.from_dict(code, spec, base_dir)
                for code, spec in types.items()
            }
        )


class FileBackend(Backend):
    """Records from CSV and JSON files, held in memory."""

    def __init__(self, config: FileBackendConfig) -> None:
        self.config = config
        self.records = {code: spec.load() for code, spec in config.certificate_types.items()}

    @classmethod
    def from_options(cls, options: Mapping[str, Any], base_dir: Path) -> FileBackend:
        """Build from the `[backend]` options plus `certificate_types`; reads every file."""
        return cls(FileBackendConfig.from_dict(options, base_dir))

    def served_types(self) -> dict[str, tuple[str, ...]]:
        """Each configured certificate type and its field names."""
        return {
            code: tuple(spec.layout.fields) for code, spec in self.config.certificate_types.items()
        }

    async def fetch(self, certificate_type: str, subject: SubjectId) -> Record | None:
        """The subject's record of that type from memory."""
        return self.records[certificate_type].get(subject.id)
