"""The adapter node checks the hub's certificate against the CA's CRL on every call, as the hub
checks its callers: revoking the hub's certificate stops its next Fetch, without a restart.
"""

from __future__ import annotations

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


def serial_of(path: Path) -> int:
    return x509.load_pem_x509_certificate(path.read_bytes()).serial_number


async def test_a_revoked_hub_certificate_is_refused_on_the_next_call(
    tmp_path: Path, pki: TestPki
) -> None:
    write_csv(tmp_path / "residents.csv")
    config = write_config(tmp_path, pki, 'kind = "files"\n' + file_type(Path("residents.csv")))
    ca_dir = pki.ca.parent
    # A hub identity of its own, so revoking it touches no other test's certificate.
    hub = issue_identity(ca_dir, tmp_path / "hub", "hub-to-revoke", "hub", "EXCHANGE")
    async with running_node(config) as port, adapter_client(port, hub) as client:
        answer = await client.Fetch(fetch_request(ZHANG), timeout=10)
        assert answer.document.signature

        revoke_certificates(ca_dir, serial=serial_of(hub.cert), reason="key_compromise")

        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await client.Fetch(fetch_request(ZHANG), timeout=10)
    assert refused.value.code() == grpc.StatusCode.UNAUTHENTICATED
    assert refused.value.details() == f"certificate {serial_of(hub.cert):x} is revoked"


def test_an_explicit_crl_path_is_read_from_the_tls_table(tmp_path: Path, pki: TestPki) -> None:
    config = write_config(tmp_path, pki, 'kind = "files"\n')
    text = config.read_text(encoding="utf-8").replace("[tls]\n", '[tls]\ncrl = "pki/ca.crl"\n')
    config.write_text(text, encoding="utf-8")

    assert AdapterConfig.from_file(config).crl == tmp_path / "pki" / "ca.crl"
