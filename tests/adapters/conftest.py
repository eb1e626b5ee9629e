"""Fixtures for adapter-node tests: the hub's and a department's identities."""

from __future__ import annotations

import pytest
from pki_fixture import TestPki

from exchange.tls import TlsFiles


@pytest.fixture
def hub_tls(pki: TestPki) -> TlsFiles:
    """The identity the hub calls adapter nodes with (role "hub")."""
    return pki.identity("hub", "hub", "EXCHANGE")


@pytest.fixture
def department_tls(pki: TestPki) -> TlsFiles:
    """A department's identity (civil affairs), which must not reach a node directly."""
    return pki.identity("civil-affairs", "department", "MCA")
