"""Audit-log fixtures: key files, a migrated database, a running AuditLog."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
import sqlalchemy as sa

from audit.config import AuditConfig, create_keys
from audit.log import AuditLog
from exchange.db import make_engine, upgrade


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
