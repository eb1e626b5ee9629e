"""Fixtures for hub tests: a running exchange (hub, adapter nodes, catalogue) per test."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from hub_world import HubWorld, running_world
from pki_fixture import TestPki


@pytest.fixture
async def world(tmp_path: Path, pki: TestPki) -> AsyncIterator[HubWorld]:
    """A hub on a SQLite file with PSB (two replicas) and AMR adapter nodes, all registered.

    Clients: `world.lookup()` as MCA, `world.registry()` as the admin, `world.audit()` as the
    auditor; pass another identity (`world.pki.identity(...)`) to call as someone else.
    """
    async with running_world(tmp_path, pki) as running:
        yield running
