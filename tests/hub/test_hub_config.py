"""The hub's configuration file: the documented example works, mistakes are named."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

import exchange.config
from exchange.config import HubConfig


def documented_example() -> str:
    """The example in exchange/config.py's docstring, as a user would copy it."""
    doc = exchange.config.__doc__ or ""
    example = doc.split("::", 1)[1]
    return "\n".join(line[4:] for line in example.splitlines())


def write(directory: Path, text: str) -> Path:
    path = directory / "hub.toml"
    path.write_text(text, encoding="utf-8")
    return path


def test_the_documented_example_is_a_valid_config(tmp_path: Path) -> None:
    config = HubConfig.from_file(write(tmp_path, documented_example()))

    assert config.listen == "127.0.0.1:7443"
    # A relative SQLite file lives next to the config, wherever the hub is started from.
    assert config.database == f"sqlite:///{tmp_path / 'exchange.db'}"
    assert config.tls.cert == tmp_path / "pki/hub/hub.pem"
    assert config.audit.log_key == tmp_path / "keys/log.sign.key"
    assert config.kafka == {"bootstrap_servers": "127.0.0.1:9092", "topic": "exchange.audit"}
    assert config.lookup.adapter_timeout_seconds == 5
    assert config.lookup.default_deadline_seconds == 30


MINIMAL = """
[tls]
ca = "ca.pem"
cert = "hub.pem"
key = "hub.key"

[audit]
log_key = "log.key"
secrets = "log.secrets"
"""


def test_defaults(tmp_path: Path) -> None:
    config = HubConfig.from_file(write(tmp_path, MINIMAL))
    assert config.listen == "127.0.0.1:7443"
    assert config.database == f"sqlite:///{tmp_path / 'exchange.db'}"
    assert config.kafka is None
    assert config.lookup.adapter_timeout_seconds == 5


@pytest.mark.parametrize(
    ("database", "expected"),
    [
        ("postgresql://exchange@db.example/exchange", "postgresql://exchange@db.example/exchange"),
        ("sqlite:////var/lib/exchange.db", "sqlite:////var/lib/exchange.db"),
        ("sqlite:///data/x.db", "sqlite:///{dir}/data/x.db"),
    ],
)
def test_database_urls(tmp_path: Path, database: str, expected: str) -> None:
    config = HubConfig.from_file(write(tmp_path, f'database = "{database}"\n' + MINIMAL))
    assert config.database == expected.format(dir=tmp_path)


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ('lisen = "127.0.0.1:1"\n' + MINIMAL, "unknown key(s) at top level: 'lisen'"),
        (
            MINIMAL + "[lookup]\nadapter_timeout = 3\n",
            "unknown key(s) at [lookup]: 'adapter_timeout'",
        ),
        (MINIMAL + '[kafka]\ntopic = "t"\nbrokers = "b"\n', "unknown key(s) at [kafka]: 'brokers'"),
        (MINIMAL + "[lookup]\nadapter_timeout_seconds = 0\n", "expected a positive number"),
        (MINIMAL.replace('key = "hub.key"\n', ""), "[tls] needs 'key'"),
        (MINIMAL.split("[audit]")[0], "missing table [audit]"),
        (MINIMAL + 'colour = "blue"\n', "audit: unknown key(s) colour"),
        ('database = "not a url"\n' + MINIMAL, "is not a database URL"),
        ("listen = \n", "hub.toml"),
    ],
)
def test_mistakes_are_named(tmp_path: Path, text: str, problem: str) -> None:
    with pytest.raises(ValueError, match=re.escape(problem)):
        HubConfig.from_file(write(tmp_path, text))
