"""The adapter node over real mutual TLS: what the hub gets back, and what others do not."""

from __future__ import annotations

import dataclasses
import datetime as dt
from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import grpc.aio
import pytest
from adapter_world import (
    DEPARTMENT,
    FIELDS,
    LI,
    NOBODY,
    SQL_TYPE,
    ZHANG,
    ZHANG_EXPIRES,
    ZHANG_ISSUED,
    adapter_client,
    count_residents,
    fetch_request,
    file_type,
    running_node,
    write_config,
    write_csv,
    write_database,
    write_json,
)
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from grpc_health.v1 import health_pb2, health_pb2_grpc
from pki_fixture import TestPki

from adapters.config import AdapterConfig
from adapters.node import build_adapter_server
from exchange.tls import TlsFiles, channel_credentials
from exchange.v1 import adapter_pb2, common_pb2


@pytest.fixture(params=["sql", "csv", "json"])
def config_path(request: pytest.FixtureRequest, tmp_path: Path, pki: TestPki) -> Path:
    """A PSB node config over each backend, holding the same records."""
    if request.param == "sql":
        write_database(f"sqlite:///{tmp_path / 'psb.db'}")
        # A relative SQLite path: taken from the config file's folder.
        return write_config(tmp_path, pki, 'kind = "sql"\nurl = "sqlite:///psb.db"\n' + SQL_TYPE)
    data = tmp_path / f"residents.{request.param}"
    (write_csv if request.param == "csv" else write_json)(data)
    return write_config(tmp_path, pki, 'kind = "files"\n' + file_type(data))


@pytest.fixture
async def port(config_path: Path) -> AsyncIterator[int]:
    async with running_node(config_path) as node_port:
        yield node_port


def public_key(pki: TestPki) -> Ed25519PublicKey:
    """PSB's public key as the registry would hold it, read with `cryptography` alone."""
    key = serialization.load_pem_public_key(pki.signing_key("psb").public.read_bytes())
    assert isinstance(key, Ed25519PublicKey)
    return key


async def fetch(port: int, tls: TlsFiles, request: adapter_pb2.FetchRequest) -> common_pb2.Document:
    async with adapter_client(port, tls) as stub:
        response = await stub.Fetch(request)
    return common_pb2.Document.FromString(response.document.payload)


async def refusal(
    port: int, tls: TlsFiles, request: adapter_pb2.FetchRequest
) -> grpc.aio.AioRpcError:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await fetch(port, tls, request)
    return caught.value


async def test_hub_gets_a_document_signed_by_the_department(
    port: int, hub_tls: TlsFiles, pki: TestPki
) -> None:
    async with adapter_client(port, hub_tls) as stub:
        response = await stub.Fetch(fetch_request(ZHANG, request_id="req-42"))
    signed = response.document

    public_key(pki).verify(signed.signature, signed.payload)  # raises if forged
    assert signed.algorithm == "Ed25519"
    assert signed.key_id == pki.signing_key("psb").key_id
    document = common_pb2.Document.FromString(signed.payload)
    assert document.document_id == "PSB-2019-0001"  # the newest record of this subject
    assert document.certificate_type == "resident_identity"
    assert document.issuer == DEPARTMENT
    assert document.subject == common_pb2.Subject(kind=common_pb2.RESIDENT_ID, id=ZHANG)
    assert document.request_id == "req-42"
    assert dict(document.fields) == {
        "name": "张伟",
        "birth_date": "1990-05-17",
        "address": "北京市东城区景山前街4号",
    }
    # Stored as Beijing dates without a zone; sent as the same instants.
    assert document.issued_at.ToDatetime(dt.UTC) == ZHANG_ISSUED
    assert document.valid_until.ToDatetime(dt.UTC) == ZHANG_EXPIRES
    signed_at = document.signed_at.ToDatetime(dt.UTC)
    assert abs(dt.datetime.now(dt.UTC) - signed_at) < dt.timedelta(minutes=5)


async def test_a_changed_payload_no_longer_verifies(
    port: int, hub_tls: TlsFiles, pki: TestPki
) -> None:
    async with adapter_client(port, hub_tls) as stub:
        signed = (await stub.Fetch(fetch_request(ZHANG))).document
    document = common_pb2.Document.FromString(signed.payload)
    document.fields["name"] = "王芳"

    with pytest.raises(InvalidSignature):
        public_key(pki).verify(signed.signature, document.SerializeToString())


async def test_only_the_requested_fields_leave_the_department(port: int, hub_tls: TlsFiles) -> None:
    document = await fetch(port, hub_tls, fetch_request(ZHANG, fields=("name",)))

    assert dict(document.fields) == {"name": "张伟"}


async def test_a_field_the_record_lacks_is_absent_not_empty(port: int, hub_tls: TlsFiles) -> None:
    document = await fetch(port, hub_tls, fetch_request(LI, fields=("name", "address")))

    assert dict(document.fields) == {"name": "李娜"}
    assert not document.HasField("valid_until")  # valid without end


async def test_unknown_subject_is_not_found(port: int, hub_tls: TlsFiles) -> None:
    error = await refusal(port, hub_tls, fetch_request(NOBODY))

    assert error.code() == grpc.StatusCode.NOT_FOUND
    assert error.details() == "no resident_identity record for this subject"


async def test_certificate_type_not_served_is_not_found(port: int, hub_tls: TlsFiles) -> None:
    error = await refusal(port, hub_tls, fetch_request(ZHANG, certificate_type="business_licence"))

    assert error.code() == grpc.StatusCode.NOT_FOUND
    assert "business_licence" in (error.details() or "")


async def test_unknown_field_is_invalid_argument_naming_it(port: int, hub_tls: TlsFiles) -> None:
    error = await refusal(port, hub_tls, fetch_request(ZHANG, fields=("name", "criminal_record")))

    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "'criminal_record'" in (error.details() or "")


async def test_malformed_subject_is_invalid_argument(port: int, hub_tls: TlsFiles) -> None:
    wrong_check = ZHANG[:-1] + ("0" if ZHANG[-1] != "0" else "1")
    error = await refusal(port, hub_tls, fetch_request(wrong_check))

    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert (error.details() or "").startswith("subject.id")


async def test_request_without_request_id_is_refused(port: int, hub_tls: TlsFiles) -> None:
    error = await refusal(port, hub_tls, fetch_request(ZHANG, request_id=""))

    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert (error.details() or "").startswith("request_id")


@pytest.mark.parametrize("method", ["Fetch", "Describe"])
async def test_a_department_cannot_call_a_node_directly(
    port: int, department_tls: TlsFiles, method: str
) -> None:
    async with adapter_client(port, department_tls) as stub:
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            if method == "Fetch":
                await stub.Fetch(fetch_request(ZHANG))
            else:
                await stub.Describe(adapter_pb2.DescribeRequest())

    assert caught.value.code() == grpc.StatusCode.PERMISSION_DENIED
    assert caught.value.details() == "only the hub may call an adapter node"


async def test_describe_lists_types_fields_and_signing_key(
    port: int, hub_tls: TlsFiles, pki: TestPki
) -> None:
    async with adapter_client(port, hub_tls) as stub:
        description = await stub.Describe(adapter_pb2.DescribeRequest())

    assert description.department == DEPARTMENT
    assert [(t.code, tuple(t.fields)) for t in description.certificate_types] == [
        ("resident_identity", FIELDS)
    ]
    assert description.key_id == pki.signing_key("psb").key_id
    assert description.public_key == public_key(pki).public_bytes_raw()


async def test_health_reports_the_adapter_service_serving(
    port: int, department_tls: TlsFiles
) -> None:
    channel_tls = channel_credentials(department_tls)  # any verified peer may probe health
    async with grpc.aio.secure_channel(f"127.0.0.1:{port}", channel_tls) as channel:
        health = health_pb2_grpc.HealthStub(channel)
        reply = await health.Check(
            health_pb2.HealthCheckRequest(service="exchange.v1.AdapterService")
        )

    assert reply.status == health_pb2.HealthCheckResponse.SERVING


# --- hostile input --------------------------------------------------------------------------


async def test_sql_shaped_subject_and_fields_do_no_harm(
    tmp_path: Path, pki: TestPki, hub_tls: TlsFiles
) -> None:
    url = f"sqlite:///{tmp_path / 'psb.db'}"
    write_database(url)
    config = write_config(tmp_path, pki, f'kind = "sql"\nurl = "{url}"\n' + SQL_TYPE)
    hostile_subject = fetch_request("110101'; DROP TABLE residents; --")
    hostile_field = fetch_request(ZHANG, fields=("name FROM residents; DROP TABLE residents; --",))

    async with running_node(config) as port:
        subject_error = await refusal(port, hub_tls, hostile_subject)
        field_error = await refusal(port, hub_tls, hostile_field)
        still_served = await fetch(port, hub_tls, fetch_request(ZHANG, fields=("name",)))

    assert subject_error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert field_error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert count_residents(url) == 3
    assert dict(still_served.fields) == {"name": "张伟"}


async def test_a_second_node_on_a_taken_port_fails_to_start(port: int, config_path: Path) -> None:
    config = dataclasses.replace(AdapterConfig.from_file(config_path), listen=f"127.0.0.1:{port}")

    with pytest.raises(OSError, match=rf"cannot listen on 127\.0\.0\.1:{port}"):
        build_adapter_server(config)
