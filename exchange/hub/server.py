"""The hub as one object: database, registry, audit log and gRPC server, started together.

`build_hub(config)` wires the parts; `await hub.start()` migrates the database, opens the audit
log and binds the mTLS port; `await hub.stop(grace)` stops accepting calls, lets calls in flight
finish, then closes adapter channels and flushes the audit log. Every service is registered
through the gate (exchange/gated_server.py), which runs before every handler (identity,
revocation, role, audit of refusals).
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass, field

import grpc
import grpc.aio
import sqlalchemy as sa
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_health.v1.health import aio as health_aio
from grpc_reflection.v1alpha import reflection

from audit.kafka_relay import KafkaRelay
from audit.log import AuditLog
from audit.service import AuditServicer
from exchange.config import HubConfig
from exchange.consent_uses import ConsentUses
from exchange.db import make_engine, upgrade
from exchange.gated_server import GatedServer
from exchange.hub.gate import Gate
from exchange.hub.lookup import LookupServicer
from exchange.hub.routing import Router
from exchange.quota import Quotas
from exchange.registry.service import RegistryServicer
from exchange.registry.store import RegistryStore
from exchange.revocation import RevocationList, revocation_list_for
from exchange.tls import MAX_MESSAGE_BYTES, server_credentials
from exchange.v1 import (
    audit_pb2,
    audit_pb2_grpc,
    lookup_pb2,
    lookup_pb2_grpc,
    registry_pb2,
    registry_pb2_grpc,
)

log = logging.getLogger(__name__)

SERVICE_NAMES = (
    lookup_pb2.DESCRIPTOR.services_by_name["LookupService"].full_name,
    registry_pb2.DESCRIPTOR.services_by_name["RegistryService"].full_name,
    audit_pb2.DESCRIPTOR.services_by_name["AuditService"].full_name,
)

HEALTH = health_pb2.DESCRIPTOR.services_by_name["Health"].full_name


@dataclass
class Hub:
    """A hub process's parts. Build with `build_hub`, then `start()` and, at the end, `stop()`."""

    config: HubConfig
    port: int = 0
    engine: sa.Engine | None = None
    registry: RegistryStore | None = None
    audit: AuditLog | None = None
    _server: grpc.aio.Server | None = field(default=None, repr=False)
    relay: KafkaRelay | None = None
    _router: Router | None = field(default=None, repr=False)
    _health: health_aio.HealthServicer | None = field(default=None, repr=False)

    @property
    def address(self) -> str:
        """host:port the hub is bound to (after start)."""
        host = self.config.listen.rpartition(":")[0]
        return f"{host}:{self.port}"

    async def start(self) -> int:
        """Migrate the database, open the registry and audit log, bind and serve; the port.

        Raises OSError when the address cannot be bound; whatever was opened is closed again.
        """
        engine = self.engine = make_engine(self.config.database)
        try:
            await asyncio.to_thread(upgrade, engine)
            self.registry = RegistryStore(engine)
            self.audit = AuditLog.open(engine, self.config.audit)
            await self.audit.start()
            if self.config.kafka is not None:
                kafka = self.config.kafka
                self.relay = KafkaRelay(engine, kafka["bootstrap_servers"], kafka["topic"])
                await self.relay.start()
            self._router = Router(self.config.tls, self.config.lookup.adapter_timeout_seconds)
            revocations = revocation_list_for(self.config.tls.ca, self.config.crl)
            self._server = self._build_server(
                self.registry, self.audit, self._router, revocations, ConsentUses(engine)
            )
            self.port = self._bind(self._server)
            await self._server.start()
            await self._mark_serving()
        except BaseException:
            await self.stop(None)
            raise
        log.info("hub serving on %s", self.address)
        return self.port

    def _bind(self, server: grpc.aio.Server) -> int:
        try:
            port: int = server.add_secure_port(
                self.config.listen, server_credentials(self.config.tls)
            )
        except RuntimeError as exc:  # grpc's way of saying the address is taken
            raise OSError(f"cannot listen on {self.config.listen}: {exc}") from exc
        if port == 0:
            raise OSError(f"cannot listen on {self.config.listen}")
        return port

    def _build_server(
        self,
        registry: RegistryStore,
        audit: AuditLog,
        router: Router,
        revocations: RevocationList,
        consent_uses: ConsentUses,
    ) -> grpc.aio.Server:
        server = grpc.aio.server(
            options=[
                ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
                ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
            ],
        )
        # Every service is registered through the gate, and only through it.
        gated = GatedServer(server, Gate(registry, audit, revocations=revocations))
        lookup_pb2_grpc.add_LookupServiceServicer_to_server(
            LookupServicer(
                registry,
                audit,
                router,
                self.config.lookup.default_deadline_seconds,
                consent_uses=consent_uses,
                quotas=Quotas(),
            ),
            gated,
        )
        registry_pb2_grpc.add_RegistryServiceServicer_to_server(
            RegistryServicer(registry, audit), gated
        )
        audit_pb2_grpc.add_AuditServiceServicer_to_server(AuditServicer(audit), gated)
        self._health = health_aio.HealthServicer()
        health_pb2_grpc.add_HealthServicer_to_server(self._health, gated)
        reflection.enable_server_reflection(
            (*SERVICE_NAMES, HEALTH, reflection.SERVICE_NAME), gated
        )
        return gated  # the hub keeps only the gated face of its server

    async def _mark_serving(self) -> None:
        assert self._health is not None
        for name in ("", *SERVICE_NAMES):
            await self._health.set(name, health_pb2.HealthCheckResponse.SERVING)

    async def stop(self, grace: float | None = 5.0) -> None:
        """Stop accepting calls, finish those in flight (up to `grace` s), flush the audit log."""
        if self._health is not None:
            await self._health.enter_graceful_shutdown()
        if self._server is not None:
            await self._server.stop(grace)
            self._server = None
        await self._close_parts()

    async def _close_parts(self) -> None:
        if self._router is not None:
            await self._router.close()
            self._router = None
        if self.audit is not None:
            await self.audit.close()
            self.audit = None
        if self.relay is not None:
            # What it has not published stays in the log; the next relay resumes from its offset.
            await self.relay.stop()
            self.relay = None
        if self.registry is not None:
            await self.registry.aclose()
            self.registry = None
        if self.engine is not None:
            self.engine.dispose()
            self.engine = None


def build_hub(config: HubConfig) -> Hub:
    """A hub for `config`, not yet started."""
    return Hub(config)


# The name the team brief uses.
build_hub_server = build_hub
