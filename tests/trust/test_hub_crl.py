"""The hub's [tls] crl setting: an explicit CRL path must exist, and is the list the gate applies;
without it the hub watches ca.crl next to the CA certificate.
"""

from __future__ import annotations

import dataclasses
import shutil
from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import grpc.aio
import pytest
from cryptography import x509
from grpc_health.v1 import health_pb2, health_pb2_grpc
from hub_world import write_hub_config
from pki_fixture import TestPki

from exchange.config import HubConfig
from exchange.hub.server import Hub, build_hub
from exchange.pki import issue_identity
from exchange.revocation import revoke_certificates
from exchange.tls import TlsFiles, channel_credentials


def test_the_crl_path_is_read_relative_to_the_config(tmp_path: Path, pki: TestPki) -> None:
    path = write_hub_config(tmp_path, pki)
    text = path.read_text(encoding="utf-8").replace("[tls]\n", '[tls]\ncrl = "pki/ca.crl"\n')
    path.write_text(text, encoding="utf-8")

    assert HubConfig.from_file(path).crl == tmp_path / "pki" / "ca.crl"
    assert HubConfig.from_file(write_hub_config(tmp_path / "plain", pki)).crl is None


async def test_a_hub_whose_configured_crl_is_missing_does_not_start(
    tmp_path: Path, pki: TestPki
) -> None:
    config = HubConfig.from_file(write_hub_config(tmp_path, pki))
    hub = build_hub(dataclasses.replace(config, crl=tmp_path / "nowhere.crl"))
    with pytest.raises(FileNotFoundError, match=r"nowhere\.crl"):
        await hub.start()


@pytest.fixture
async def hub_with_published_crl(tmp_path: Path, pki: TestPki) -> AsyncIterator[tuple[Hub, Path]]:
    """A hub applying the CRL published at tmp/published.crl (a copy the test refreshes)."""
    published = tmp_path / "published.crl"
    shutil.copyfile(pki.ca.parent / "ca.crl", published)
    config = HubConfig.from_file(write_hub_config(tmp_path, pki))
    hub = build_hub(dataclasses.replace(config, crl=published))
    await hub.start()
    yield hub, published
    await hub.stop(None)


async def test_the_hub_applies_the_configured_crl_not_the_cas_folder(
    tmp_path: Path, pki: TestPki, hub_with_published_crl: tuple[Hub, Path]
) -> None:
    hub, published = hub_with_published_crl
    files: TlsFiles = issue_identity(
        pki.ca.parent, tmp_path / "ids", "probe", "auditor", "EXCHANGE"
    )
    serial = x509.load_pem_x509_certificate(files.cert.read_bytes()).serial_number
    async with grpc.aio.secure_channel(hub.address, channel_credentials(files)) as channel:
        health = health_pb2_grpc.HealthStub(channel)
        revoke_certificates(pki.ca.parent, serial=serial)
        # Revoked at the CA, but not yet published where this hub looks.
        answer = await health.Check(health_pb2.HealthCheckRequest())
        assert answer.status == health_pb2.HealthCheckResponse.SERVING

        shutil.copyfile(pki.ca.parent / "ca.crl", published)

        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await health.Check(health_pb2.HealthCheckRequest())
    assert refused.value.code() == grpc.StatusCode.UNAUTHENTICATED
    assert refused.value.details() == f"certificate {serial:x} is revoked"
