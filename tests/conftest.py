"""Fixtures every test area shares: databases (SQLite and PostgreSQL) and the test PKI.

PostgreSQL tests run against 127.0.0.1:5432 (database `test`), each in a schema of its own.
Outside CI they skip when PostgreSQL is not reachable; with CI=true they fail instead.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import sqlalchemy as sa

POSTGRES_URL = os.environ.get(
    "EXCHANGE_TEST_POSTGRES", "postgresql+psycopg://postgres@127.0.0.1:5432/test"
)
IN_CI = os.environ.get("CI", "").lower() in {"1", "true", "yes"}


def _postgres_reachable() -> str | None:
    try:
        engine = sa.create_engine(POSTGRES_URL, connect_args={"connect_timeout": 3})
        with engine.connect():
            pass
        engine.dispose()
    except Exception as exc:  # any failure means "not reachable"
        return str(exc).splitlines()[0]
    return None


@pytest.fixture(scope="session")
def postgres_server() -> str:
    """The PostgreSQL URL; skips (fails in CI) when the server is down."""
    problem = _postgres_reachable()
    if problem is not None:
        if IN_CI:
            pytest.fail(f"PostgreSQL is required in CI but unreachable: {problem}")
        pytest.skip(f"PostgreSQL unreachable: {problem}")
    return POSTGRES_URL


@pytest.fixture
def postgres_url(postgres_server: str) -> Iterator[str]:
    """A URL whose connections see an empty schema of their own, dropped afterwards."""
    schema = f"t_{uuid.uuid4().hex[:12]}"
    admin = sa.create_engine(postgres_server)
    with admin.begin() as conn:
        conn.execute(sa.text(f'CREATE SCHEMA "{schema}"'))
    yield f"{postgres_server}?options=-csearch_path%3D{schema}"
    with admin.begin() as conn:
        conn.execute(sa.text(f'DROP SCHEMA "{schema}" CASCADE'))
    admin.dispose()


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """Each test using this runs twice: on a fresh SQLite file and on a fresh PostgreSQL schema."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'exchange.db'}"
    url: str = request.getfixturevalue("postgres_url")
    return url


# --- the test PKI (exchange/pki.py) ------------------------------------------------------------

from pki_fixture import TestPki  # noqa: E402 - kept next to the fixture that uses it


@pytest.fixture(scope="session")
def pki(tmp_path_factory: pytest.TempPathFactory) -> TestPki:
    """One CA for the session; `.identity(name, role, department)` etc. issue once and cache."""
    return TestPki(tmp_path_factory.mktemp("pki"))


from kafka_fixture import kafka_broker  # noqa: E402, F401 - the tansu broker fixture
