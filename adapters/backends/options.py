"""Reading a table of config options strictly: unknown keys refused, types checked, errors named.

Every message starts with where the option lives (e.g. "certificate_types.resident_identity")
so an operator can find the line in the config file.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from datetime import tzinfo
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError


class OptionReader:
    """One table of options; refuses keys outside `allowed` as soon as it is made."""

    def __init__(self, options: Mapping[str, Any], where: str, allowed: Iterable[str]) -> None:
        if not isinstance(options, Mapping):
            raise ValueError(f"{where}: expected a table, got {type(options).__name__}")
        allowed = sorted(allowed)
        unknown = sorted(set(options) - set(allowed))
        if unknown:
            names = ", ".join(repr(key) for key in unknown)
            raise ValueError(
                f"{where}: unknown key{'s' if len(unknown) > 1 else ''} {names} "
                f"(allowed: {', '.join(allowed)})"
            )
        self.options = options
        self.where = where

    def text(self, key: str, default: str | None = None) -> str:
        """A required non-empty string, or `default` when absent and a default is given."""
        if key not in self.options:
            if default is None:
                raise ValueError(f"{self.where}: missing required key {key!r}")
            return default
        value = self.options[key]
        if not isinstance(value, str) or not value:
            raise ValueError(f"{self.where}.{key}: expected a non-empty string")
        return value

    def optional_text(self, key: str) -> str | None:
        """A non-empty string, or None when absent."""
        return self.text(key) if key in self.options else None

    def path(self, key: str, base_dir: Path) -> Path:
        """A required path; a relative one is taken from `base_dir` (the config file's folder)."""
        return (base_dir / Path(self.text(key)).expanduser()).resolve()

    def table(self, key: str) -> Mapping[str, Any]:
        """A required sub-table (e.g. certificate_types)."""
        value = self.options.get(key)
        if not isinstance(value, Mapping):
            raise ValueError(f"{self.where}: missing required table {key!r}")
        return value

    def string_map(self, key: str) -> dict[str, str]:
        """A required non-empty table of string -> non-empty string (e.g. field -> column)."""
        value = self.table(key)
        if not value:
            raise ValueError(f"{self.where}.{key}: must name at least one entry")
        for name, target in value.items():
            if not isinstance(target, str) or not target:
                raise ValueError(f"{self.where}.{key}.{name}: expected a non-empty string")
        return dict(value)

    def positive_int(self, key: str, default: int) -> int:
        """A whole number of at least 1, or `default` when absent."""
        value = self.options.get(key, default)
        if type(value) is not int or value < 1:
            raise ValueError(f"{self.where}.{key}: expected a whole number of at least 1")
        return value

    def zone(self, key: str = "timezone") -> tzinfo:
        """The time zone that dates stored without one are in; UTC when absent."""
        name = self.text(key, default="UTC")
        try:
            return ZoneInfo(name)
        except (ZoneInfoNotFoundError, ValueError) as exc:
            raise ValueError(f"{self.where}.{key}: unknown time zone {name!r}") from exc
