"""The HTTP backend against a real HTTP service on loopback: a department's record API that
answers records as JSON, says 404 for nobody, and sometimes fails, stalls or answers too much.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import http.server
import json
import ssl
import threading
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any, ClassVar
from urllib.parse import unquote

import grpc
import grpc.aio
import pytest
from adapter_world import (
    LI,
    NOBODY,
    ROWS,
    ZHANG,
    ZHANG_EXPIRES,
    ZHANG_ISSUED,
    adapter_client,
    fetch_request,
    running_node,
    write_config,
)
from pki_fixture import TestPki

from adapters.backends.http import HttpBackend
from audit.events import SubjectId
from exchange.errors import ExchangeError
from exchange.tls import TlsFiles
from exchange.v1 import common_pb2

# Subjects the service misbehaves for.
BROKEN = "110101199001011237"  # answers 500
SLOW = "110101199001011210"  # answers after the backend's timeout
HUGE = "11010119900101125X"  # answers 2 MiB
GARBLED = "110101199001011295"  # answers 200 with a body that is not JSON
TRICKLE = "110101199001011278"  # answers a byte every 0.1 s, each well within the timeout
MIXED_UP = "110101199001011286"  # answers ZHANG's records, as a buggy service might


class RecordService(http.server.BaseHTTPRequestHandler):
    """GET /api/residents/<id>: the rows of ROWS about <id> as a JSON array."""

    seen: ClassVar[list[tuple[str, dict[str, str]]]] = []  # (raw path, headers) of each request

    def do_GET(self) -> None:
        RecordService.seen.append((self.path, dict(self.headers)))
        prefix = "/api/residents/"
        subject_id = unquote(self.path[len(prefix) :]) if self.path.startswith(prefix) else ""
        if subject_id == BROKEN:
            self._answer(500, b"database is down")
        elif subject_id == SLOW:
            threading.Event().wait(1.0)
            self._answer(200, b"[]")
        elif subject_id == HUGE:
            self._answer(200, b"[" + b" " * (2 << 20) + b"]")
        elif subject_id == GARBLED:
            self._answer(200, b"<html>maintenance</html>")
        elif subject_id == MIXED_UP:
            rows = [row for row in ROWS if row["id_number"] == ZHANG]
            self._answer(200, json.dumps(rows, ensure_ascii=False).encode())
        elif subject_id == TRICKLE:
            self._answer(200, b"[]" + b" " * 20, pause=0.1)
        else:
            rows = [row for row in ROWS if row["id_number"] == subject_id]
            if rows:
                self._answer(200, json.dumps(rows, ensure_ascii=False).encode())
            else:
                self._answer(404, b"{}")

    def _answer(self, status: int, body: bytes, pause: float = 0) -> None:
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        with contextlib.suppress(OSError):  # the backend may have given up already
            if not pause:
                self.wfile.write(body)
                return
            for byte in body:
                self.wfile.write(bytes([byte]))
                self.wfile.flush()
                threading.Event().wait(pause)

    def log_message(self, format: str, *args: Any) -> None:
        pass


@contextlib.contextmanager
def record_service(tls: ssl.SSLContext | None = None) -> Iterator[str]:
    """The service on a free loopback port; yields its base URL."""
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), RecordService)
    if tls is not None:
        server.socket = tls.wrap_socket(server.socket, server_side=True)
    RecordService.seen = []
    thread = threading.Thread(target=server.serve_forever, args=(0.02,), daemon=True)
    thread.start()
    try:
        scheme = "https" if tls else "http"
        yield f"{scheme}://127.0.0.1:{server.server_address[1]}/api"
    finally:
        server.shutdown()
        server.server_close()


def options(base_url: str, **backend: object) -> dict[str, object]:
    return {
        "base_url": base_url,
        "timeout_ms": 300,
        **backend,
        "certificate_types": {
            "resident_identity": {
                "path": "residents/{subject_id}",
                "document_id_key": "certificate_no",
                "issued_at_key": "issued_on",
                "valid_until_key": "expires_on",
                "timezone": "Asia/Shanghai",
                "fields": {"name": "full_name", "address": "household_address"},
            }
        },
    }


def resident(subject_id: str) -> SubjectId:
    return SubjectId("RESIDENT_ID", subject_id)


@contextlib.asynccontextmanager
async def backend_on(base_url: str, **backend: object) -> AsyncIterator[HttpBackend]:
    built = HttpBackend.from_options(options(base_url, **backend), Path("."))
    try:
        yield built
    finally:
        await built.close()


async def test_the_latest_record_comes_back_in_utc_with_only_its_values() -> None:
    with record_service() as url:
        async with backend_on(url) as backend:
            zhang = await backend.fetch("resident_identity", resident(ZHANG))
            li = await backend.fetch("resident_identity", resident(LI))
            nobody = await backend.fetch("resident_identity", resident(NOBODY))

    assert zhang is not None and li is not None
    assert zhang.document_id == "PSB-2019-0001"  # of ZHANG's two records, the later
    assert (zhang.issued_at, zhang.valid_until) == (ZHANG_ISSUED, ZHANG_EXPIRES)
    assert zhang.fields == {"name": "张伟", "address": "北京市东城区景山前街4号"}
    assert li.valid_until is None and li.fields == {"name": "李娜"}
    assert nobody is None  # 404


async def test_a_subject_id_cannot_reach_another_path() -> None:
    with record_service() as url:
        async with backend_on(url) as backend:
            found = await backend.fetch("resident_identity", resident("../../admin?x=1#y"))
        (path, _), *_ = RecordService.seen

    assert found is None
    assert path == "/api/residents/..%2F..%2Fadmin%3Fx%3D1%23y"


@pytest.mark.parametrize(
    ("subject_id", "logged"),
    [
        (BROKEN, "answered HTTP 500"),
        (SLOW, "took longer than timeout_ms (300)"),
        (TRICKLE, "took longer than timeout_ms (300)"),
        (HUGE, f"answered more than max_response_bytes ({1 << 20})"),
    ],
    ids=["error-status", "too-slow", "trickling", "too-large"],
)
async def test_a_failing_service_is_unavailable_so_the_hub_can_fail_over(
    subject_id: str, logged: str, caplog: pytest.LogCaptureFixture
) -> None:
    with record_service() as url:
        async with backend_on(url) as backend:
            with pytest.raises(ExchangeError) as failed:
                await backend.fetch("resident_identity", resident(subject_id))

    assert failed.value.status == grpc.StatusCode.UNAVAILABLE
    assert failed.value.message == "the department's record service is unavailable"
    assert any(logged in record.getMessage() for record in caplog.records)
    assert not any(subject_id in record.getMessage() for record in caplog.records)


async def test_a_service_that_is_not_there_is_unavailable() -> None:
    with record_service() as url:
        pass  # stopped: nothing listens on its port any more
    async with backend_on(url) as backend:
        with pytest.raises(ExchangeError) as failed:
            await backend.fetch("resident_identity", resident(ZHANG))

    assert failed.value.status == grpc.StatusCode.UNAVAILABLE


async def test_with_a_subject_key_a_record_about_someone_else_is_never_signed() -> None:
    with record_service() as url:
        async with backend_on(url) as backend:
            unchecked = await backend.fetch("resident_identity", resident(MIXED_UP))
        checking = options(url)
        types: Any = checking["certificate_types"]
        types["resident_identity"]["subject_key"] = "id_number"
        backend = HttpBackend.from_options(checking, Path("."))
        try:
            zhang = await backend.fetch("resident_identity", resident(ZHANG))
            with pytest.raises(ValueError) as mixed_up:
                await backend.fetch("resident_identity", resident(MIXED_UP))
        finally:
            await backend.close()

    assert unchecked is not None  # without subject_key the service is trusted to answer right
    assert zhang is not None and zhang.document_id == "PSB-2019-0001"
    assert str(mixed_up.value) == (
        "resident_identity: the service's answer[0]: a record about another subject"
    )


async def test_an_answer_that_is_not_json_is_a_malformed_record() -> None:
    with record_service() as url:
        async with backend_on(url) as backend:
            with pytest.raises(ValueError) as malformed:
                await backend.fetch("resident_identity", resident(GARBLED))

    assert str(malformed.value) == "resident_identity: the service's answer is not JSON"


async def test_credentials_come_from_the_environment_and_must_be_there(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    headers = {"headers_from_env": {"Authorization": "PSB_API_AUTHORIZATION"}}
    with record_service() as url:
        with pytest.raises(ValueError) as missing:
            HttpBackend.from_options(options(url, **headers), Path("."))
        monkeypatch.setenv("PSB_API_AUTHORIZATION", "Bearer node-7")
        async with backend_on(url, **headers) as backend:
            await backend.fetch("resident_identity", resident(ZHANG))
        (_, sent), *_ = RecordService.seen

    assert str(missing.value) == (
        "backend.headers_from_env.Authorization: environment variable "
        "'PSB_API_AUTHORIZATION' is not set"
    )
    assert sent["Authorization"] == "Bearer node-7"


async def test_over_https_the_node_checks_the_service_and_shows_its_own_certificate(
    pki: TestPki, tmp_path: Path
) -> None:
    service = pki.identity("psb-records", "adapter", "PSB")
    node = pki.identity("psb-adapter", "adapter", "PSB")
    tls = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH, cafile=str(service.ca))
    tls.load_cert_chain(service.cert, service.key)
    tls.verify_mode = ssl.CERT_REQUIRED  # the service admits only certificates of its CA

    with record_service(tls) as url:
        trusted = {"ca": str(node.ca), "client_cert": str(node.cert), "client_key": str(node.key)}
        async with backend_on(url, **trusted) as backend:
            found = await backend.fetch("resident_identity", resident(ZHANG))
        async with backend_on(url) as untrusting:  # the system's CAs: not the exchange's
            with pytest.raises(ExchangeError) as refused:
                await untrusting.fetch("resident_identity", resident(ZHANG))

    assert found is not None and found.document_id == "PSB-2019-0001"
    assert refused.value.status == grpc.StatusCode.UNAVAILABLE


async def test_a_node_on_the_http_backend_signs_what_the_service_answers(
    tmp_path: Path, pki: TestPki, hub_tls: TlsFiles
) -> None:
    with record_service() as url:
        config = write_config(
            tmp_path,
            pki,
            f'kind = "http"\nbase_url = "{url}"\n'
            "[certificate_types.resident_identity]\n"
            'path = "residents/{subject_id}"\n'
            'document_id_key = "certificate_no"\n'
            'issued_at_key = "issued_on"\n'
            'timezone = "Asia/Shanghai"\n'
            'fields = { name = "full_name" }\n',
        )
        async with running_node(config) as port, adapter_client(port, hub_tls) as stub:
            response = await stub.Fetch(fetch_request(ZHANG, fields=("name",)))
            with pytest.raises(grpc.aio.AioRpcError) as nobody:
                await stub.Fetch(fetch_request(NOBODY, fields=("name",)))

    document = common_pb2.Document.FromString(response.document.payload)
    assert dict(document.fields) == {"name": "张伟"}
    assert document.issued_at.ToDatetime(dt.UTC) == ZHANG_ISSUED
    assert nobody.value.code() == grpc.StatusCode.NOT_FOUND
