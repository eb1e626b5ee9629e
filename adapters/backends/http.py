"""The HTTP backend: reads records from a department's own HTTP service, one GET per fetch.

Many departments already answer "the record about this person" over HTTP. Each certificate
type names a path under `base_url` with `{subject_id}` in it, percent-encoded so that no
subject id can reach another path or add a query. The answer is read as JSON:

- 200 with an object: the record; with an array of objects: the one issued last (none: no
  record); with `null`: no record.
- 404: no record (the hub hears NOT_FOUND).
- Anything else (another status, a redirect, a timeout, a refused connection, an answer
  larger than `max_response_bytes`): the department's service is unavailable, which lets
  the hub try another replica. A 200 whose body is not such JSON is a malformed record.

    [backend]
    kind = "http"
    base_url = "https://records.psb.example.gov/api/"
    timeout_ms = 3000                     # optional (default 3000): for the whole exchange
    max_response_bytes = 1048576          # optional (default 1 MiB)
    ca = "certs/psb-api-ca.pem"           # optional: the CA to trust for https (default: system)
    client_cert = "certs/node.pem"        # optional, with client_key: mutual TLS to the service
    client_key = "certs/node.key"
    headers_from_env = { Authorization = "PSB_API_AUTHORIZATION" }  # optional: values from
                                          # the environment, so no secret sits in the file

    [certificate_types.resident_identity]
    path = "residents/{subject_id}"
    subject_key = "id_number"             # optional: each record must be about the subject
    document_id_key = "certificate_no"
    issued_at_key = "issued_on"
    valid_until_key = "expires_on"        # optional; null or absent means valid without end
    timezone = "Asia/Shanghai"            # optional (default UTC): zone of dates without one
    fields = { name = "full_name", address = "household_address" }

httpx (one pooled AsyncClient per node) does the HTTP: it is asynchronous, so a slow service
holds no thread, and it bounds connect, read and pool waits. Proxy settings from the
environment are not used: a node talks to its department's service directly.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import ssl
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote

import httpx

from adapters.backends.base import Backend, Record
from adapters.backends.options import OptionReader
from adapters.backends.values import RecordLayout, render
from audit.events import SubjectId
from exchange.errors import unavailable

log = logging.getLogger(__name__)

DEFAULT_TIMEOUT_MS = 3000
DEFAULT_MAX_RESPONSE_BYTES = 1 << 20
# Connections to the service kept open, and made at most at once.
MAX_CONNECTIONS = 32

_BACKEND_KEYS = (
    "base_url",
    "timeout_ms",
    "max_response_bytes",
    "ca",
    "client_cert",
    "client_key",
    "headers_from_env",
    "certificate_types",
)
_TYPE_KEYS = (
    "path",
    "subject_key",
    "document_id_key",
    "issued_at_key",
    "valid_until_key",
    "timezone",
    "fields",
)


@dataclass(frozen=True)
class HttpCertificateType:
    """Where one certificate type's records are asked for and which JSON key holds what."""

    code: str
    path: str  # with "{subject_id}"
    subject_key: str | None
    layout: RecordLayout  # keys in the JSON object

    @classmethod
    def from_dict(cls, code: str, d: Mapping[str, Any]) -> HttpCertificateType:
        """Parse `[certificate_types.<code>]`; ValueError names any unknown or missing key."""
        where = f"certificate_types.{code}"
        reader = OptionReader(d, where, _TYPE_KEYS)
        path = reader.text("path")
        if path.count("{subject_id}") != 1 or path.replace("{subject_id}", "").count("{"):
            raise ValueError(
                f"{where}.path: must hold {{subject_id}} once, and nothing else in {{}}"
            )
        return cls(
            code=code,
            path=path.lstrip("/"),  # under base_url, never beside it
            subject_key=reader.optional_text("subject_key"),
            layout=RecordLayout.read(reader, "key"),
        )

    def url_path(self, subject_id: str) -> str:
        """The path asked for about `subject_id`, which cannot leave its one path segment."""
        return self.path.replace("{subject_id}", quote(subject_id, safe=""))

    def record(self, body: object, subject_id: str, where: str) -> Record | None:
        """The record in a decoded 200 answer about `subject_id`; ValueError names what is
        malformed."""
        items = body if isinstance(body, list) else [] if body is None else [body]
        if not all(isinstance(item, dict) for item in items):
            raise ValueError(f"{where}: expected a JSON object, an array of objects or null")
        many = isinstance(body, list)
        records = [
            self._one(item, subject_id, f"{where}[{i}]" if many else where)
            for i, item in enumerate(items)
        ]
        return max(records, key=lambda r: r.issued_at, default=None)

    def _one(self, item: Mapping[str, Any], subject_id: str, where: str) -> Record:
        if self.subject_key is not None:
            about = render(item.get(self.subject_key))
            if about is None or about.strip().upper() != subject_id:
                # A service's mistake: the node would sign another person's record as theirs.
                raise ValueError(f"{where}: a record about another subject")
        return self.layout.record(item.get, where)


@dataclass(frozen=True)
class HttpBackendConfig:
    """The `[backend]` table (kind = "http") and the certificate types it serves."""

    base_url: str
    certificate_types: dict[str, HttpCertificateType]
    timeout_ms: int = DEFAULT_TIMEOUT_MS
    max_response_bytes: int = DEFAULT_MAX_RESPONSE_BYTES
    ca: Path | None = None
    client_cert: Path | None = None
    client_key: Path | None = None
    headers: tuple[tuple[str, str], ...] = ()

    @classmethod
    def from_dict(cls, d: Mapping[str, Any], base_dir: Path) -> HttpBackendConfig:
        """Parse the options; relative file paths are taken from `base_dir`. The headers'
        environment variables must be set now: a node missing its credentials does not start.
        """
        reader = OptionReader(d, "backend", _BACKEND_KEYS)
        base_url = reader.text("base_url")
        parsed = httpx.URL(base_url)
        if parsed.scheme not in ("http", "https") or not parsed.host:
            raise ValueError("backend.base_url: expected an http:// or https:// URL")
        if parsed.query or parsed.fragment:
            raise ValueError("backend.base_url: must have no query or fragment")
        types = reader.table("certificate_types")
        if not types:
            raise ValueError("certificate_types: configure at least one certificate type")
        files = {
            key: reader.path(key, base_dir) if key in d else None
            for key in ("ca", "client_cert", "client_key")
        }
        if (files["client_cert"] is None) != (files["client_key"] is None):
            raise ValueError("backend: client_cert and client_key go together")
        from_env = d.get("headers_from_env", {})
        if not isinstance(from_env, Mapping):
            raise ValueError("backend.headers_from_env: expected a table of header = variable")
        headers = []
        for name, variable in from_env.items():
            value = os.environ.get(variable) if isinstance(variable, str) else None
            if not value:
                raise ValueError(
                    f"backend.headers_from_env.{name}: environment variable {variable!r} is not set"
                )
            headers.append((name, value))
        return cls(
            base_url=base_url if base_url.endswith("/") else base_url + "/",
            certificate_types={
                code: HttpCertificateType.from_dict(code, spec) for code, spec in types.items()
            },
            timeout_ms=reader.positive_int("timeout_ms", DEFAULT_TIMEOUT_MS),
            max_response_bytes=reader.positive_int(
                "max_response_bytes", DEFAULT_MAX_RESPONSE_BYTES
            ),
            ca=files["ca"],
            client_cert=files["client_cert"],
            client_key=files["client_key"],
            headers=tuple(headers),
        )

    def ssl_context(self) -> ssl.SSLContext:
        """Server verification against `ca` (or the system's), plus the client certificate."""
        context = ssl.create_default_context(cafile=str(self.ca) if self.ca else None)
        if self.client_cert is not None and self.client_key is not None:
            context.load_cert_chain(self.client_cert, self.client_key)
        return context


class HttpBackend(Backend):
    """Records from a department's HTTP service."""

    def __init__(self, config: HttpBackendConfig) -> None:
        self.config = config
        self._client = httpx.AsyncClient(
            base_url=config.base_url,
            headers={"Accept": "application/json", **dict(config.headers)},
            # _get bounds each whole exchange; this, twice as long, is only a backstop.
            timeout=httpx.Timeout(2 * config.timeout_ms / 1000),
            limits=httpx.Limits(
                max_connections=MAX_CONNECTIONS, max_keepalive_connections=MAX_CONNECTIONS
            ),
            verify=config.ssl_context(),
            follow_redirects=False,
            trust_env=False,
        )

    @classmethod
    def from_options(cls, options: Mapping[str, Any], base_dir: Path) -> HttpBackend:
        """Build from the `[backend]` options plus `certificate_types`."""
        return cls(HttpBackendConfig.from_dict(options, base_dir))

    def served_types(self) -> dict[str, tuple[str, ...]]:
        """Each configured certificate type and its field names."""
        return {
            code: tuple(spec.layout.fields) for code, spec in self.config.certificate_types.items()
        }

    async def fetch(self, certificate_type: str, subject: SubjectId) -> Record | None:
        """The subject's record of that type, asked of the service."""
        spec = self.config.certificate_types[certificate_type]
        body = await self._get(certificate_type, spec.url_path(subject.id))
        if body is None:
            return None
        try:
            decoded = json.loads(body)
        except ValueError as exc:  # not JSON, or not UTF-8
            raise ValueError(f"{certificate_type}: the service's answer is not JSON") from exc
        return spec.record(decoded, subject.id, f"{certificate_type}: the service's answer")

    async def _get(self, certificate_type: str, path: str) -> bytes | None:
        """The body of a 200 answer; None for a 404; unavailable for anything else."""
        limit = self.config.max_response_bytes
        try:
            # httpx bounds each connect, read and write; this bounds them all together (a
            # service sending a byte now and then would otherwise hold the call for long).
            async with (
                asyncio.timeout(self.config.timeout_ms / 1000),
                self._client.stream("GET", path) as response,
            ):
                if response.status_code == 404:
                    return None
                if response.status_code != 200:
                    problem = f"answered HTTP {response.status_code}"
                else:
                    body = bytearray()
                    async for chunk in response.aiter_bytes():
                        body += chunk
                        if len(body) > limit:
                            break
                    if len(body) <= limit:
                        return bytes(body)
                    problem = f"answered more than max_response_bytes ({limit})"
        except httpx.HTTPError as exc:  # refused, reset, timed out, TLS failed
            problem = f"failed: {type(exc).__name__}: {exc}"
        except TimeoutError:
            problem = f"took longer than timeout_ms ({self.config.timeout_ms})"
        # The path holds the subject id: it stays out of the log.
        log.error("record service for %s %s", certificate_type, problem)
        raise unavailable("the department's record service is unavailable")

    async def close(self) -> None:
        """Close the pooled connections."""
        await self._client.aclose()
