"""A small department world for adapter-node tests: records, their files, configs and clients.

The public security bureau (PSB) issues `resident_identity` records. The same three rows are
written as an SQLite/PostgreSQL table, a CSV file and a JSON file, so every backend answers
the same questions the same way.
"""

from __future__ import annotations

import contextlib
import csv
import datetime as dt
import json
from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import grpc.aio
import sqlalchemy as sa
from pki_fixture import TestPki

from adapters.config import AdapterConfig
from adapters.node import build_adapter_server
from exchange.subject import make_resident_id
from exchange.tls import TlsFiles, channel_credentials
from exchange.v1 import adapter_pb2, adapter_pb2_grpc, common_pb2

DEPARTMENT = "PSB"
ZHANG = make_resident_id("110101", dt.date(1990, 5, 17), 123)
LI = make_resident_id("310104", dt.date(1985, 2, 3), 456)
NOBODY = make_resident_id("440305", dt.date(2000, 1, 1), 7)
FIELDS = ("name", "birth_date", "address")

# Dates as a department keeps them: ISO text without a zone, read as Beijing time.
ROWS: list[dict[str, str | None]] = [
    {
        "id_number": ZHANG,
        "certificate_no": "PSB-2019-0001",
        "full_name": "张伟",
        "birth_date": "1990-05-17",
        "household_address": "北京市东城区景山前街4号",
        "issued_on": "2019-03-01",
        "expires_on": "2039-03-01",
    },
    {  # An older record of the same person: the newer one above must win.
        "id_number": ZHANG,
        "certificate_no": "PSB-2009-0777",
        "full_name": "张伟",
        "birth_date": "1990-05-17",
        "household_address": "北京市西城区",
        "issued_on": "2009-03-01",
        "expires_on": "2019-03-01",
    },
    {  # No address on file and no end of validity.
        "id_number": LI,
        "certificate_no": "PSB-2015-0420",
        "full_name": "李娜",
        "birth_date": "1985-02-03",
        "household_address": None,
        "issued_on": "2015-07-20T09:30:00",
        "expires_on": None,
    },
]
BEIJING = dt.timezone(dt.timedelta(hours=8))
ZHANG_ISSUED = dt.datetime(2019, 3, 1, tzinfo=BEIJING)
ZHANG_EXPIRES = dt.datetime(2039, 3, 1, tzinfo=BEIJING)

SQL_TYPE = """
[certificate_types.resident_identity]
table = "residents"
subject_column = "id_number"
document_id_column = "certificate_no"
issued_at_column = "issued_on"
valid_until_column = "expires_on"
timezone = "Asia/Shanghai"
fields = { name = "full_name", birth_date = "birth_date", address = "household_address" }
"""


def file_type(path: Path) -> str:
    """The [certificate_types] section reading resident_identity from a CSV or JSON file."""
    return f"""
[certificate_types.resident_identity]
path = "{path.name}"
subject_key = "id_number"
document_id_key = "certificate_no"
issued_at_key = "issued_on"
valid_until_key = "expires_on"
timezone = "Asia/Shanghai"
fields = {{ name = "full_name", birth_date = "birth_date", address = "household_address" }}
"""


def residents_table() -> sa.Table:
    return sa.Table(
        "residents",
        sa.MetaData(),
        sa.Column("id", sa.Integer, primary_key=True),
        *(sa.Column(name, sa.Text) for name in ROWS[0]),
    )


def write_database(url: str) -> None:
    """The residents table with ROWS, on any SQLAlchemy URL."""
    engine = sa.create_engine(url)
    table = residents_table()
    with engine.begin() as connection:
        table.create(connection)
        connection.execute(table.insert(), ROWS)
    engine.dispose()


def count_residents(url: str) -> int:
    engine = sa.create_engine(url)
    with engine.connect() as connection:
        count = connection.execute(sa.text("SELECT count(*) FROM residents")).scalar_one()
    engine.dispose()
    return int(count)


def write_csv(path: Path) -> None:
    with path.open("w", encoding="utf-8-sig", newline="") as stream:  # as Excel saves it
        writer = csv.DictWriter(stream, fieldnames=list(ROWS[0]))
        writer.writeheader()
        writer.writerows({k: "" if v is None else v for k, v in row.items()} for row in ROWS)


def write_json(path: Path) -> None:
    path.write_text(json.dumps(ROWS, ensure_ascii=False), encoding="utf-8")


def write_config(directory: Path, pki: TestPki, backend: str, **top: str) -> Path:
    """An adapter node config for PSB in `directory`; `backend` is the TOML after [backend]."""
    tls = pki.identity("psb-adapter", "adapter", DEPARTMENT)
    settings = {
        "listen": "127.0.0.1:0",
        "department": DEPARTMENT,
        "signing_key": str(pki.signing_key("psb").private),
        **top,
    }
    lines = [f"{key} = {json.dumps(value)}" for key, value in settings.items()]
    lines += ["[tls]", f'ca = "{tls.ca}"', f'cert = "{tls.cert}"', f'key = "{tls.key}"']
    path = directory / "adapter.toml"
    path.write_text("\n".join(lines) + "\n[backend]\n" + backend, encoding="utf-8")
    return path


@contextlib.asynccontextmanager
async def running_node(config_path: Path) -> AsyncIterator[int]:
    """An adapter node serving on 127.0.0.1; yields its port."""
    server, port = build_adapter_server(AdapterConfig.from_file(config_path))
    await server.start()
    try:
        yield port
    finally:
        await server.stop(None)


@contextlib.asynccontextmanager
async def adapter_client(
    port: int, tls: TlsFiles
) -> AsyncIterator[adapter_pb2_grpc.AdapterServiceAsyncStub]:
    """An AdapterService stub over mutual TLS as the holder of `tls`."""
    target = f"127.0.0.1:{port}"
    async with grpc.aio.secure_channel(target, channel_credentials(tls)) as channel:
        yield adapter_pb2_grpc.AdapterServiceStub(channel)  # type: ignore[misc]


def fetch_request(
    subject_id: str,
    fields: tuple[str, ...] = FIELDS,
    certificate_type: str = "resident_identity",
    request_id: str = "req-0001",
) -> adapter_pb2.FetchRequest:
    return adapter_pb2.FetchRequest(
        certificate_type=certificate_type,
        subject=common_pb2.Subject(kind=common_pb2.RESIDENT_ID, id=subject_id),
        fields=list(fields),
        request_id=request_id,
        requester_department="MCA",
        purpose="marriage registration",
    )
