"""The adapter node's config file: the documented example works, mistakes are named."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest
from adapter_world import SQL_TYPE, write_config, write_database
from pki_fixture import TestPki

from adapters.backends.sql import SqlBackend
from adapters.config import AdapterConfig

EXAMPLE = """\
listen = "127.0.0.1:7601"
department = "PSB"
signing_key = "keys/psb.sign.key"
shutdown_grace_seconds = 2.5

[tls]
ca = "pki/ca.pem"
cert = "pki/psb-adapter.pem"
key = "pki/psb-adapter.key"

[backend]
kind = "sql"
url = "sqlite:///psb.db"
"""


def write(directory: Path, text: str) -> Path:
    path = directory / "adapter.toml"
    path.write_text(text, encoding="utf-8")
    return path


def test_relative_paths_are_taken_from_the_config_folder(tmp_path: Path) -> None:
    folder = tmp_path / "etc" / "psb"
    folder.mkdir(parents=True)
    write_database(f"sqlite:///{folder / 'psb.db'}")

    config = AdapterConfig.from_file(write(folder, EXAMPLE + SQL_TYPE))

    assert config.listen == "127.0.0.1:7601"
    assert config.department == "PSB"
    assert config.shutdown_grace_seconds == 2.5
    assert config.signing_key == folder / "keys" / "psb.sign.key"
    assert config.tls.ca == folder / "pki" / "ca.pem"
    assert config.tls.key == folder / "pki" / "psb-adapter.key"
    backend = config.load_backend()
    assert isinstance(backend, SqlBackend)
    assert backend.config.url == f"sqlite:///{folder / 'psb.db'}"
    assert backend.served_types() == {"resident_identity": ("name", "birth_date", "address")}


def test_an_unknown_key_is_rejected_by_name(tmp_path: Path) -> None:
    path = write(tmp_path, EXAMPLE.replace("listen =", "listne =") + SQL_TYPE)

    with pytest.raises(ValueError, match=r"adapter\.toml: config: unknown key 'listne'"):
        AdapterConfig.from_file(path)


def test_an_unknown_tls_key_is_rejected_by_name(tmp_path: Path) -> None:
    path = write(tmp_path, EXAMPLE.replace('key = "pki', 'private_key = "pki') + SQL_TYPE)

    with pytest.raises(ValueError, match="tls: unknown key 'private_key'"):
        AdapterConfig.from_file(path)


def test_an_unknown_certificate_type_key_is_rejected_by_name(tmp_path: Path) -> None:
    config = AdapterConfig.from_file(write(tmp_path, EXAMPLE + SQL_TYPE.replace("table", "tabel")))

    with pytest.raises(
        ValueError, match=r"certificate_types\.resident_identity: unknown key 'tabel'"
    ):
        config.load_backend()


def test_a_missing_key_is_named(tmp_path: Path) -> None:
    path = write(tmp_path, EXAMPLE.replace('department = "PSB"\n', "") + SQL_TYPE)

    with pytest.raises(ValueError, match="missing required key 'department'"):
        AdapterConfig.from_file(path)


@pytest.mark.parametrize(
    ("section", "problem"),
    [
        (
            "query = \"SELECT * FROM residents WHERE id_number = '{id}'\"",
            "must use the bound parameter :subject_id",
        ),
        ('query = "DELETE FROM residents WHERE id_number = :subject_id"', "must be a SELECT"),
        (
            'query = "SELECT * FROM residents WHERE id_number = :subject_id"\ntable = "residents"',
            "either 'query' or 'table'",
        ),
        ('table = "residents"\nsubject_column = "id"\ntimezone = "Mars/Olympus"', "time zone"),
    ],
)
def test_a_bad_certificate_type_is_refused_before_serving(
    tmp_path: Path, section: str, problem: str
) -> None:
    certificate_type = textwrap.dedent("""
        [certificate_types.resident_identity]
        document_id_column = "certificate_no"
        issued_at_column = "issued_on"
        fields = { name = "full_name" }
        """)
    config = AdapterConfig.from_file(write(tmp_path, EXAMPLE + certificate_type + section + "\n"))

    with pytest.raises(ValueError, match=problem):
        config.load_backend()


def test_a_backend_without_certificate_types_is_refused(tmp_path: Path, pki: TestPki) -> None:
    config = AdapterConfig.from_file(write_config(tmp_path, pki, 'kind = "files"\n'))

    with pytest.raises(ValueError, match="certificate_types"):
        config.load_backend()


def test_a_listen_address_needs_a_port(tmp_path: Path) -> None:
    path = write(tmp_path, EXAMPLE.replace("127.0.0.1:7601", "127.0.0.1") + SQL_TYPE)

    with pytest.raises(ValueError, match="listen: expected host:port"):
        AdapterConfig.from_file(path)
