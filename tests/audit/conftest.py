"""Audit-log fixtures: key files, a migrated database, a running AuditLog, and an
AuditService over mutual TLS holding the entries described in audit_world."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import grpc
import grpc.aio
import pytest
import sqlalchemy as sa
from audit_world import HRSS_REFUSED, MCA_ENTRIES, lookup_event
from pki_fixture import TestPki

from audit.config import AuditConfig, create_keys
from audit.events import Outcome
from audit.log import AuditLog
from audit.service import AuditServicer
from exchange.db import make_engine, upgrade
from exchange.identity import CURRENT_IDENTITY, identity_from_context
from exchange.tls import TlsFiles, channel_credentials, server_credentials
from exchange.v1 import audit_pb2_grpc


@pytest.fixture
def audit_config(tmp_path: Path) -> AuditConfig:
    """Fresh log keys; a long interval so only explicit checkpoints are signed in tests."""
    config = create_keys(tmp_path / "audit-keys")
    return AuditConfig(
        log_key=config.log_key, secrets=config.secrets, checkpoint_interval_seconds=3600
    )


@pytest.fixture
def engine(database_url: str) -> Iterator[sa.Engine]:
    """A migrated database (SQLite file or PostgreSQL schema)."""
    engine = make_engine(database_url)
    upgrade(engine)
    yield engine
    engine.dispose()


@pytest.fixture
async def audit_log(engine: sa.Engine, audit_config: AuditConfig) -> AsyncIterator[AuditLog]:
    """A started AuditLog, closed after the test."""
    log = AuditLog.open(engine, audit_config)
    await log.start()
    yield log
    await log.close()


class IdentityFromCertificate(grpc.aio.ServerInterceptor):  # type: ignore[misc]
    """What the hub's gate does for these tests: CURRENT_IDENTITY from the client certificate."""

    async def intercept_service(self, continuation: Callable[..., Any], details: Any) -> Any:
        handler = await continuation(details)
        if handler.unary_unary is not None:
            inner = handler.unary_unary

            async def unary(request: Any, context: Any) -> Any:
                CURRENT_IDENTITY.set(identity_from_context(context))
                return await inner(request, context)

            return handler._replace(unary_unary=unary)
        inner_stream = handler.unary_stream

        async def stream(request: Any, context: Any) -> AsyncIterator[Any]:
            CURRENT_IDENTITY.set(identity_from_context(context))
            async for response in inner_stream(request, context):
                yield response

        return handler._replace(unary_stream=stream)


@pytest.fixture
def auditor(pki: TestPki) -> TlsFiles:
    return pki.identity("auditor-1", "auditor", "EXCHANGE")


@pytest.fixture
async def served(audit_log: AuditLog, pki: TestPki) -> AsyncIterator[int]:
    await asyncio.gather(
        *(audit_log.append(lookup_event(i)) for i in range(MCA_ENTRIES)),
        *(
            audit_log.append(
                lookup_event(
                    3,
                    requester_department="HRSS",
                    outcome=Outcome.REFUSED,
                    status="PERMISSION_DENIED",
                    reason="no grant",
                    fields_released=(),
                )
            )
            for _ in range(HRSS_REFUSED)
        ),
    )
    server = grpc.aio.server(interceptors=[IdentityFromCertificate()])
    audit_pb2_grpc.add_AuditServiceServicer_to_server(AuditServicer(audit_log), server)
    port = server.add_secure_port(
        "127.0.0.1:0", server_credentials(pki.identity("hub", "hub", "EXCHANGE"))
    )
    await server.start()
    yield port
    await server.stop(None)


@pytest.fixture
async def stub(served: int, auditor: TlsFiles) -> AsyncIterator[audit_pb2_grpc.AuditServiceStub]:
    async with grpc.aio.secure_channel(
        f"127.0.0.1:{served}", channel_credentials(auditor)
    ) as channel:
        yield audit_pb2_grpc.AuditServiceStub(channel)
