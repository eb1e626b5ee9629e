"""Registry fixtures: a migrated database (SQLite file or PostgreSQL schema) and a store on it."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import sqlalchemy as sa

from exchange.db import make_engine, upgrade
from exchange.registry import RegistryStore


@pytest.fixture
def engine(database_url: str) -> Iterator[sa.Engine]:
    """An engine on a freshly migrated database."""
    engine = make_engine(database_url)
    upgrade(engine)
    yield engine
    engine.dispose()


@pytest.fixture
def store(engine: sa.Engine) -> RegistryStore:
    return RegistryStore(engine)
