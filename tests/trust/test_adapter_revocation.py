"""The adapter node checks the hub's certificate against the CA's CRL on every call, as the hub
checks its callers: revoking the hub's certificate stops its next Fetch, without a restart,
also on a FetchStream opened before the revocation.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import grpc
import grpc.aio
import pytest
from adapter_world import (
    ZHANG,
    adapter_client,
    fetch_request,
    file_type,
    running_node,
    write_config,
    write_csv,
)
from cryptography import x509
from pki_fixture import TestPki

from adapters.config import AdapterConfig
from exchange.pki import issue_identity
from exchange.revocation import revoke_certificates
from exchange.tls import TlsFiles
from exchange.v1 import adapter_pb2


def serial_of(path: Path) -> int:
    return x509.load_pem_x509_certificate(path.read_bytes()).serial_number


@dataclasses.dataclass
class RevocableHub:
    node_config: Path  # a PSB node over a CSV file
    tls: TlsFiles  # a hub identity of its own, so revoking it touches no other test's

    def revoke(self, pki: TestPki) -> str:
        """Revoke the hub's certificate; the refusal message callers will then get."""
        serial = serial_of(self.tls.cert)
        revoke_certificates(pki.ca.parent, serial=serial, reason="key_compromise")
        return f"certificate {serial:x} is revoked"


@pytest.fixture
def hub(tmp_path: Path, pki: TestPki) -> RevocableHub:
    write_csv(tmp_path / "residents.csv")
    config = write_config(tmp_path, pki, 'kind = "files"\n' + file_type(Path("residents.csv")))
    tls = issue_identity(pki.ca.parent, tmp_path / "hub", "hub-to-revoke", "hub", "EXCHANGE")
    return RevocableHub(config, tls)


async def test_a_revoked_hub_certificate_is_refused_on_the_next_call(
    hub: RevocableHub, pki: TestPki
) -> None:
    async with running_node(hub.node_config) as port, adapter_client(port, hub.tls) as client:
        answer = await client.Fetch(fetch_request(ZHANG), timeout=10)
        assert answer.document.signature

        refusal = hub.revoke(pki)

        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await client.Fetch(fetch_request(ZHANG), timeout=10)
    assert refused.value.code() == grpc.StatusCode.UNAUTHENTICATED
    assert refused.value.details() == refusal


async def test_a_revoked_hub_certificate_ends_a_stream_already_open_at_its_next_call(
    hub: RevocableHub, pki: TestPki
) -> None:
    async with running_node(hub.node_config) as port, adapter_client(port, hub.tls) as client:
        stream = client.FetchStream()
        await stream.write(
            adapter_pb2.FetchCall(call_id=1, request=fetch_request(ZHANG), timeout_ms=5000)
        )
        first = await stream.read()
        assert first.response.document.signature

        refusal = hub.revoke(pki)
        await stream.write(
            adapter_pb2.FetchCall(call_id=2, request=fetch_request(ZHANG), timeout_ms=5000)
        )

        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await stream.read()
    assert refused.value.code() == grpc.StatusCode.UNAUTHENTICATED
    assert refused.value.details() == refusal


def test_an_explicit_crl_path_is_read_from_the_tls_table(tmp_path: Path, pki: TestPki) -> None:
    config = write_config(tmp_path, pki, 'kind = "files"\n')
    text = config.read_text(encoding="utf-8").replace("[tls]\n", '[tls]\ncrl = "pki/ca.crl"\n')
    config.write_text(text, encoding="utf-8")

    assert AdapterConfig.from_file(config).crl == tmp_path / "pki" / "ca.crl"
