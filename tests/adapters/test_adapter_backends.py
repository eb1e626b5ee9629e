"""Backends on their own: real databases and files in, Records out; plug-ins found by kind."""

from __future__ import annotations

import datetime as dt
import json
import sqlite3
import textwrap
from pathlib import Path

import grpc
import pytest
import sqlalchemy as sa
from adapter_world import (
    LI,
    ROWS,
    ZHANG,
    ZHANG_ISSUED,
    adapter_client,
    count_residents,
    fetch_request,
    running_node,
    write_config,
    write_database,
)
from pki_fixture import TestPki

from adapters.backends import BackendLoadError, UnknownBackendError, load_backend
from adapters.backends.files import FileBackend
from adapters.backends.sql import SqlBackend
from audit.events import SubjectId
from exchange.tls import TlsFiles
from exchange.v1 import common_pb2

UTC = dt.UTC


def resident(subject_id: str) -> SubjectId:
    return SubjectId("RESIDENT_ID", subject_id)


def sql_options(url: str, **spec: object) -> dict[str, object]:
    fields = {"name": "full_name", "birth_date": "birth_date", "household_size": "household_size"}
    return {"url": url, "certificate_types": {"resident_identity": {"fields": fields, **spec}}}


TABLE_SPEC = {
    "table": "typed_residents",
    "subject_column": "id_number",
    "document_id_column": "certificate_no",
    "issued_at_column": "issued_on",
    "valid_until_column": "expires_at",
}


def write_typed_residents(url: str) -> None:
    """Dates as real DATE and TIMESTAMP WITH TIME ZONE columns, a number, a NULL."""
    table = sa.Table(
        "typed_residents",
        sa.MetaData(),
        sa.Column("id_number", sa.String(18)),
        sa.Column("certificate_no", sa.String(32)),
        sa.Column("full_name", sa.Text),
        sa.Column("birth_date", sa.Date),
        sa.Column("household_size", sa.Integer),
        sa.Column("issued_on", sa.Date),
        sa.Column("expires_at", sa.DateTime(timezone=True)),
    )
    engine = sa.create_engine(url)
    with engine.begin() as connection:
        table.create(connection)
        connection.execute(
            table.insert(),
            [
                {
                    "id_number": ZHANG,
                    "certificate_no": "PSB-2019-0001",
                    "full_name": "张伟",
                    "birth_date": dt.date(1990, 5, 17),
                    "household_size": 3,
                    "issued_on": dt.date(2019, 3, 1),
                    "expires_at": dt.datetime(2039, 3, 1, 12, 0, tzinfo=UTC),
                },
                {
                    "id_number": LI,
                    "certificate_no": "PSB-2015-0420",
                    "full_name": "李娜",
                    "birth_date": None,
                    "household_size": None,
                    "issued_on": dt.date(2015, 7, 20),
                    "expires_at": None,
                },
            ],
        )
    engine.dispose()


def typed_residents_node(tmp_path: Path, pki: TestPki, url: str, backend_option: str = "") -> Path:
    """A node config reading typed_residents (TABLE_SPEC) at `url`: name and household size."""
    spec = "\n".join(f'{key} = "{value}"' for key, value in TABLE_SPEC.items())
    backend = textwrap.dedent(f"""\
        kind = "sql"
        url = "{url}"
        {backend_option}
        [certificate_types.resident_identity]
        {spec}
        fields = {{ name = "full_name", household_size = "household_size" }}
        """)
    return write_config(tmp_path, pki, backend)


# --- SQL ------------------------------------------------------------------------------------


async def test_sql_backend_reads_typed_columns_on_sqlite_and_postgresql(database_url: str) -> None:
    write_typed_residents(database_url)
    backend = SqlBackend.from_options(sql_options(database_url, **TABLE_SPEC), Path("."))
    try:
        zhang = await backend.fetch("resident_identity", resident(ZHANG))
        li = await backend.fetch("resident_identity", resident(LI))
    finally:
        await backend.close()

    assert zhang is not None and li is not None
    assert zhang.document_id == "PSB-2019-0001"
    assert zhang.issued_at == dt.datetime(2019, 3, 1, tzinfo=UTC)
    assert zhang.valid_until == dt.datetime(2039, 3, 1, 12, 0, tzinfo=UTC)
    assert zhang.fields == {"name": "张伟", "birth_date": "1990-05-17", "household_size": "3"}
    assert li.valid_until is None
    assert li.fields == {"name": "李娜"}  # NULLs are absent fields


# The example of GB 11643-1999, whose check character is X.
WITH_X = "11010519491231002X"


async def test_sql_backend_finds_what_departments_really_store(database_url: str) -> None:
    write_typed_residents(database_url)
    row = {"full_name": None, "birth_date": None, "household_size": None, "expires_at": None}
    engine = sa.create_engine(database_url)
    with engine.begin() as connection:
        connection.execute(
            sa.text(
                "INSERT INTO typed_residents (id_number, certificate_no, full_name, birth_date,"
                " household_size, issued_on, expires_at) VALUES (:id_number, :certificate_no,"
                " :full_name, :birth_date, :household_size, :issued_on, :expires_at)"
            ),
            [
                # The check character as many registers keep it: lower case.
                {
                    **row,
                    "id_number": WITH_X.lower(),
                    "certificate_no": "PSB-X",
                    "issued_on": "2020-01-02",
                },
                # A row without an issue date: on PostgreSQL it sorted first and hid the record.
                {**row, "id_number": ZHANG, "certificate_no": "PSB-UNDATED", "issued_on": None},
                # The newest row, with no certificate number: no record to sign, not one "None".
                {**row, "id_number": LI, "certificate_no": None, "issued_on": "2024-01-01"},
            ],
        )
    engine.dispose()
    backend = SqlBackend.from_options(sql_options(database_url, **TABLE_SPEC), Path("."))
    try:
        with_x = await backend.fetch("resident_identity", resident(WITH_X))
        zhang = await backend.fetch("resident_identity", resident(ZHANG))
        with pytest.raises(ValueError) as no_number:
            await backend.fetch("resident_identity", resident(LI))
    finally:
        await backend.close()

    assert with_x is not None and with_x.document_id == "PSB-X"
    assert zhang is not None and zhang.document_id == "PSB-2019-0001"
    assert str(no_number.value) == (
        "certificate_types.resident_identity: the record has no certificate_no"
    )


async def test_a_read_stuck_behind_a_lock_ends_at_the_statement_timeout(
    postgres_url: str, tmp_path: Path, pki: TestPki, hub_tls: TlsFiles
) -> None:
    # A migration holding the table, say: the read must end, and free its thread, instead of
    # waiting for as long as the lock is held, long after the hub has given up on it.
    write_typed_residents(postgres_url)
    config = typed_residents_node(tmp_path, pki, postgres_url, "statement_timeout_ms = 300")
    engine = sa.create_engine(postgres_url)
    with engine.connect() as locker, locker.begin():
        locker.execute(sa.text("LOCK TABLE typed_residents IN ACCESS EXCLUSIVE MODE"))
        async with running_node(config) as port, adapter_client(port, hub_tls) as stub:
            with pytest.raises(grpc.aio.AioRpcError) as caught:
                await stub.Fetch(fetch_request(ZHANG, fields=("name",)), timeout=30)
    engine.dispose()

    assert caught.value.code() == grpc.StatusCode.UNAVAILABLE
    assert caught.value.details() == "the department's record store is unavailable"


def test_a_sqlite_database_that_is_not_there_stops_the_node_at_start(tmp_path: Path) -> None:
    # SQLite would create it, empty, and the node would serve UNAVAILABLE for ever.
    options = sql_options("sqlite:///pbs.db", **TABLE_SPEC)  # psb.db, mistyped

    with pytest.raises(ValueError) as refused:
        SqlBackend.from_options(options, tmp_path)
    assert str(refused.value) == f"backend.url: no SQLite database at {tmp_path / 'pbs.db'}"
    assert not (tmp_path / "pbs.db").exists()


async def test_sql_backend_runs_an_operator_query(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'psb.db'}"
    write_database(url)
    query = (
        "SELECT certificate_no AS no, issued_on, full_name FROM residents "
        "WHERE id_number = :subject_id ORDER BY issued_on DESC"
    )
    options = {
        "url": url,
        "certificate_types": {
            "resident_identity": {
                "query": query,
                "document_id_column": "no",
                "issued_at_column": "issued_on",
                "timezone": "Asia/Shanghai",
                "fields": {"name": "full_name"},
            }
        },
    }
    backend = SqlBackend.from_options(options, tmp_path)
    try:
        record = await backend.fetch("resident_identity", resident(ZHANG))
    finally:
        await backend.close()

    assert record is not None
    assert record.document_id == "PSB-2019-0001"
    assert record.issued_at == ZHANG_ISSUED
    assert record.fields == {"name": "张伟"}


@pytest.mark.parametrize("mode", ["table", "query"])
async def test_sql_injection_in_the_subject_id_matches_nothing(tmp_path: Path, mode: str) -> None:
    url = f"sqlite:///{tmp_path / 'psb.db'}"
    write_database(url)
    spec: dict[str, object] = {"table": "residents", "subject_column": "id_number"}
    if mode == "query":
        spec = {"query": "SELECT * FROM residents WHERE id_number = :subject_id"}
    fields = {"name": "full_name"}
    options = {
        "url": url,
        "certificate_types": {
            "resident_identity": {
                **spec,
                "document_id_column": "certificate_no",
                "issued_at_column": "issued_on",
                "fields": fields,
            }
        },
    }
    backend = SqlBackend.from_options(options, tmp_path)
    try:
        # Spliced into SQL text, these would return someone's record or drop the table.
        for hostile in ("x' OR '1'='1", "x'; DROP TABLE residents; --"):
            assert await backend.fetch("resident_identity", resident(hostile)) is None
    finally:
        await backend.close()

    assert count_residents(url) == len(ROWS)


async def test_hub_gets_a_document_from_postgresql(
    postgres_url: str, tmp_path: Path, pki: TestPki, hub_tls: TlsFiles
) -> None:
    write_typed_residents(postgres_url)
    config = typed_residents_node(tmp_path, pki, postgres_url)

    async with running_node(config) as port, adapter_client(port, hub_tls) as stub:
        response = await stub.Fetch(fetch_request(ZHANG, fields=("name", "household_size")))

    document = common_pb2.Document.FromString(response.document.payload)
    assert dict(document.fields) == {"name": "张伟", "household_size": "3"}
    assert document.valid_until.ToDatetime(UTC) == dt.datetime(2039, 3, 1, 12, 0, tzinfo=UTC)


async def test_database_down_is_unavailable_so_the_hub_can_fail_over(
    tmp_path: Path, pki: TestPki, hub_tls: TlsFiles
) -> None:
    # Nothing listens on port 1: the connection is refused at once.
    url = "postgresql+psycopg://postgres@127.0.0.1:1/psb?connect_timeout=3"
    backend = f'kind = "sql"\nurl = "{url}"\n' + textwrap.dedent("""\
        [certificate_types.resident_identity]
        table = "residents"
        subject_column = "id_number"
        document_id_column = "certificate_no"
        issued_at_column = "issued_on"
        fields = { name = "full_name" }
        """)
    config = write_config(tmp_path, pki, backend)

    async with running_node(config) as port, adapter_client(port, hub_tls) as stub:
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await stub.Fetch(fetch_request(ZHANG, fields=("name",)))

    assert caught.value.code() == grpc.StatusCode.UNAVAILABLE
    assert "postgres" not in (caught.value.details() or "")  # no URL or driver detail leaks


# --- files ----------------------------------------------------------------------------------


def files_options(path: Path, **spec: object) -> dict[str, object]:
    return {
        "certificate_types": {
            "resident_identity": {
                "path": path.name,
                "subject_key": "id_number",
                "document_id_key": "certificate_no",
                "issued_at_key": "issued_on",
                "fields": {"name": "full_name", "household_size": "household_size"},
                **spec,
            }
        }
    }


async def test_json_values_of_any_scalar_type_become_strings(tmp_path: Path) -> None:
    path = tmp_path / "residents.json"
    record = {
        "id_number": ZHANG.lower(),  # a lower-case check character "x" still matches
        "certificate_no": 2019_0001,
        "full_name": "张伟",
        "household_size": 3,
        "issued_on": "2019-03-01T08:00:00+08:00",
    }
    path.write_text(json.dumps([record], ensure_ascii=False), encoding="utf-8")

    backend = FileBackend.from_options(files_options(path), tmp_path)
    found = await backend.fetch("resident_identity", resident(ZHANG))

    assert found is not None
    assert found.document_id == "20190001"
    assert found.issued_at == dt.datetime(2019, 3, 1, 0, 0, tzinfo=UTC)
    assert found.fields == {"name": "张伟", "household_size": "3"}


def test_a_malformed_record_stops_the_node_at_start_naming_it(tmp_path: Path) -> None:
    path = tmp_path / "residents.csv"
    path.write_text(
        "id_number,certificate_no,full_name,household_size,issued_on\n"
        f"{ZHANG},PSB-1,张伟,3,2019-03-01\n"
        f"{LI},PSB-2,李娜,1,last tuesday\n",
        encoding="utf-8",
    )

    with pytest.raises(ValueError, match=r"residents\.csv record 2.*'last tuesday'"):
        FileBackend.from_options(files_options(path), tmp_path)


def test_a_csv_without_a_configured_column_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "residents.csv"
    path.write_text("id_number,full_name\n", encoding="utf-8")

    with pytest.raises(ValueError, match="no column certificate_no, issued_on"):
        FileBackend.from_options(files_options(path), tmp_path)


@pytest.mark.parametrize("suffix", ["csv", "json"])
def test_a_misspelt_validity_key_is_refused_not_read_as_no_end(tmp_path: Path, suffix: str) -> None:
    # Read as absent, the record below would be released as valid without end.
    path = tmp_path / f"residents.{suffix}"
    if suffix == "csv":
        path.write_text(
            "id_number,certificate_no,full_name,household_size,issued_on,valid_until\n"
            f"{ZHANG},PSB-1,张伟,3,2009-03-01,2019-03-01\n",
            encoding="utf-8",
        )
        message = f"{path}: no column valid_to"
    else:
        record = {
            "id_number": ZHANG,
            "certificate_no": "PSB-1",
            "full_name": "张伟",
            "household_size": 3,
            "issued_on": "2009-03-01",
            "valid_until": "2019-03-01",
        }
        path.write_text(json.dumps([record]), encoding="utf-8")
        message = f"{path}: no record has valid_to"

    with pytest.raises(ValueError) as refused:
        FileBackend.from_options(files_options(path, valid_until_key="valid_to"), tmp_path)
    assert str(refused.value) == message


@pytest.mark.parametrize(
    ("content", "problem"),
    [
        (f"{ZHANG},PSB-1,{'张' * 200_000},3,2019-03-01\n".encode(), "field larger than"),
        (f"{ZHANG},PSB-1,张伟,3,2019-03-01\n".encode("gbk"), "can't decode"),
    ],
    ids=["field-too-large", "not-utf8"],
)
def test_an_unreadable_csv_is_refused_naming_the_file(
    tmp_path: Path, content: bytes, problem: str
) -> None:
    path = tmp_path / "residents.csv"
    path.write_bytes(b"id_number,certificate_no,full_name,household_size,issued_on\n" + content)

    with pytest.raises(ValueError) as refused:
        FileBackend.from_options(files_options(path), tmp_path)
    assert str(refused.value).startswith(f"{path} after record 0: ")
    assert problem in str(refused.value)


def test_a_json_file_must_hold_an_array_of_objects(tmp_path: Path) -> None:
    path = tmp_path / "residents.json"
    path.write_text(json.dumps({"id_number": ZHANG}), encoding="utf-8")

    with pytest.raises(ValueError, match="expected a JSON array of objects"):
        FileBackend.from_options(files_options(path), tmp_path)


# --- plug-ins through the "exchange.adapters" entry-point group ------------------------------

PLUGIN = '''
from adapters.backends import Backend, Record
import datetime as dt


class MarriageRegistryBackend(Backend):
    """A third party's backend: marriage records from an in-memory register."""

    def __init__(self, spouses):
        self.spouses = spouses

    @classmethod
    def from_options(cls, options, base_dir):
        return cls(dict(options["spouses"]))

    def served_types(self):
        return {"marriage_certificate": ("spouse_name",)}

    async def fetch(self, certificate_type, subject):
        if subject.id not in self.spouses:
            return None
        issued = dt.datetime(2020, 5, 20, tzinfo=dt.UTC)
        return Record("MCA-520", issued, None, {"spouse_name": self.spouses[subject.id]})


class NotABackend:
    pass
'''


@pytest.fixture
def installed_plugin(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A distribution installed the ordinary way: a module plus its .dist-info on sys.path."""
    site = tmp_path / "site-packages"
    dist_info = site / "acme_marriage_registry-1.0.dist-info"
    dist_info.mkdir(parents=True)
    (site / "acme_marriage_registry.py").write_text(PLUGIN, encoding="utf-8")
    (dist_info / "METADATA").write_text(
        "Metadata-Version: 2.1\nName: acme-marriage-registry\nVersion: 1.0\n", encoding="utf-8"
    )
    (dist_info / "entry_points.txt").write_text(
        "[exchange.adapters]\n"
        "marriage_registry = acme_marriage_registry:MarriageRegistryBackend\n"
        "not_a_backend = acme_marriage_registry:NotABackend\n",
        encoding="utf-8",
    )
    monkeypatch.syspath_prepend(str(site))


async def test_a_plugin_backend_serves_the_hub_by_its_kind(
    installed_plugin: None, tmp_path: Path, pki: TestPki, hub_tls: TlsFiles
) -> None:
    config = write_config(
        tmp_path, pki, f'kind = "marriage_registry"\nspouses = {{ "{ZHANG}" = "王芳" }}\n'
    )
    request = fetch_request(ZHANG, fields=("spouse_name",), certificate_type="marriage_certificate")

    async with running_node(config) as port, adapter_client(port, hub_tls) as stub:
        response = await stub.Fetch(request)

    document = common_pb2.Document.FromString(response.document.payload)
    assert document.document_id == "MCA-520"
    assert dict(document.fields) == {"spouse_name": "王芳"}


def test_a_plugin_that_is_not_a_backend_is_refused(installed_plugin: None) -> None:
    with pytest.raises(BackendLoadError, match=r"not_a_backend.*not a subclass of"):
        load_backend("not_a_backend", {}, Path("."))


def test_unknown_kind_names_it_and_lists_the_available_ones(installed_plugin: None) -> None:
    with pytest.raises(UnknownBackendError) as caught:
        load_backend("ldap", {}, Path("."))

    message = str(caught.value)
    assert "unknown backend kind 'ldap'" in message
    assert "available: files, http, marriage_registry, not_a_backend, sql" in message


def test_built_in_kinds_come_before_entry_points(tmp_path: Path) -> None:
    sqlite3.connect(tmp_path / "psb.db").close()
    url = f"sqlite:///{tmp_path / 'psb.db'}"
    options = sql_options(url, **TABLE_SPEC)

    assert type(load_backend("sql", options, tmp_path)) is SqlBackend
