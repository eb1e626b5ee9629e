"""Backends an adapter node reads records through, and `load_backend` to pick one by kind.

Built-in kinds ("sql", "files", "http") are found first; any other kind is looked up in the
entry-point group "exchange.adapters", where a third party registers its Backend subclass:

    [project.entry-points."exchange.adapters"]
    ldap = "acme_exchange.ldap:LdapBackend"
"""

from __future__ import annotations

import importlib
import logging
from collections.abc import Mapping
from importlib.metadata import entry_points
from pathlib import Path
from typing import Any

from adapters.backends.base import Backend, Record

__all__ = [
    "BUILT_IN",
    "ENTRY_POINT_GROUP",
    "Backend",
    "BackendLoadError",
    "Record",
    "UnknownBackendError",
    "available_kinds",
    "backend_class",
    "load_backend",
]

log = logging.getLogger(__name__)

ENTRY_POINT_GROUP = "exchange.adapters"
# Imported only when chosen, so a files-only node never imports a database driver.
BUILT_IN = {
    "sql": "adapters.backends.sql:SqlBackend",
    "files": "adapters.backends.files:FileBackend",
    "http": "adapters.backends.http:HttpBackend",
}


class BackendLoadError(ValueError):
    """A backend kind was found but could not be loaded, or is not a Backend."""


class UnknownBackendError(BackendLoadError):
    """No built-in backend and no entry point has this kind."""


def available_kinds() -> list[str]:
    """Every kind load_backend accepts: built-ins and installed entry points."""
    return sorted(set(BUILT_IN) | {ep.name for ep in entry_points(group=ENTRY_POINT_GROUP)})


def backend_class(kind: str) -> type[Backend]:
    """The Backend subclass registered for `kind`, built-ins before entry points."""
    if kind in BUILT_IN:
        module_name, _, attribute = BUILT_IN[kind].partition(":")
        loaded: object = getattr(importlib.import_module(module_name), attribute)
        source = BUILT_IN[kind]
    else:
        found = entry_points(group=ENTRY_POINT_GROUP, name=kind)
        if not found:
            raise UnknownBackendError(
                f"unknown backend kind {kind!r}; available: {', '.join(available_kinds())}"
            )
        entry_point = next(iter(found))
        source = entry_point.value
        try:
            loaded = entry_point.load()
        except Exception as exc:  # a broken plug-in of any kind is a load error
            raise BackendLoadError(
                f"backend kind {kind!r} ({source}) failed to load: {exc}"
            ) from exc
    if not (isinstance(loaded, type) and issubclass(loaded, Backend)):
        raise BackendLoadError(
            f"backend kind {kind!r} ({source}) is not a subclass of adapters.backends.Backend"
        )
    return loaded


def load_backend(kind: str, options: Mapping[str, Any], base_dir: Path) -> Backend:
    """The backend of `kind` built from `options`; relative paths resolve against base_dir.

    Raises UnknownBackendError (listing the available kinds) or BackendLoadError, and
    ValueError from the backend for unknown or malformed options.
    """
    cls = backend_class(kind)
    backend = cls.from_options(options, base_dir)
    if not isinstance(backend, Backend):
        raise BackendLoadError(f"backend kind {kind!r}: from_options did not return a Backend")
    log.info("backend %r serves %s", kind, ", ".join(sorted(backend.served_types())))
    return backend
