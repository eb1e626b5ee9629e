"""The SQL backend on a local SQLite file, which it reads on the event loop (InlineSqlite):
it must see what the department writes while the node runs, and a writer holding the file's
lock for a moment must delay an answer, never turn it into a failure.
"""

from __future__ import annotations

import asyncio
import sqlite3
import threading
from pathlib import Path

from adapter_world import LI, ZHANG

from adapters.backends.sql import SqlBackend
from audit.events import SubjectId

SPEC = {
    "table": "residents",
    "subject_column": "id_number",
    "document_id_column": "certificate_no",
    "issued_at_column": "issued_on",
    "fields": {"name": "full_name"},
}


def write_residents(path: Path, *rows: tuple[str, str, str, str]) -> None:
    with sqlite3.connect(path) as db:
        db.execute(
            "CREATE TABLE IF NOT EXISTS residents"
            " (id_number TEXT, certificate_no TEXT, full_name TEXT, issued_on TEXT)"
        )
        db.executemany("INSERT INTO residents VALUES (?,?,?,?)", rows)
    db.close()


def backend_for(path: Path) -> SqlBackend:
    options = {"url": f"sqlite:///{path}", "certificate_types": {"resident_identity": SPEC}}
    return SqlBackend.from_options(options, path.parent)


async def test_a_record_written_while_the_node_runs_is_served_on_the_next_fetch(
    tmp_path: Path,
) -> None:
    path = tmp_path / "psb.db"
    write_residents(path, (ZHANG, "PSB-1", "张伟", "2019-03-01"))
    backend = backend_for(path)
    try:
        assert await backend.fetch("resident_identity", SubjectId("RESIDENT_ID", LI)) is None
        write_residents(path, (LI, "PSB-2", "李娜", "2015-07-20"))
        # A newer record of the same subject wins (latest issued_on), read from the same file.
        write_residents(path, (ZHANG, "PSB-3", "张伟", "2024-01-02"))
        li = await backend.fetch("resident_identity", SubjectId("RESIDENT_ID", LI))
        zhang = await backend.fetch("resident_identity", SubjectId("RESIDENT_ID", ZHANG))
    finally:
        await backend.close()

    assert li is not None and li.fields == {"name": "李娜"}
    assert zhang is not None and zhang.document_id == "PSB-3"


async def test_a_writer_holding_the_lock_delays_the_answer_and_does_not_fail_it(
    tmp_path: Path,
) -> None:
    path = tmp_path / "psb.db"  # rollback-journal mode: an exclusive lock shuts readers out
    write_residents(path, (ZHANG, "PSB-1", "张伟", "2019-03-01"))
    backend = backend_for(path)
    writer = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    writer.execute("BEGIN EXCLUSIVE")
    release = threading.Timer(0.3, writer.rollback)
    release.start()
    try:
        record = await backend.fetch("resident_identity", SubjectId("RESIDENT_ID", ZHANG))
        again = await backend.fetch("resident_identity", SubjectId("RESIDENT_ID", ZHANG))
    finally:
        release.join()
        writer.close()
        await backend.close()

    assert record is not None and record.document_id == "PSB-1"
    assert again is not None and again.fields == {"name": "张伟"}


async def test_concurrent_fetches_each_get_their_own_subject(tmp_path: Path) -> None:
    path = tmp_path / "psb.db"
    write_residents(
        path, (ZHANG, "PSB-1", "张伟", "2019-03-01"), (LI, "PSB-2", "李娜", "2015-07-20")
    )
    backend = backend_for(path)
    subjects = [ZHANG, LI] * 50
    try:
        records = await asyncio.gather(
            *(backend.fetch("resident_identity", SubjectId("RESIDENT_ID", s)) for s in subjects)
        )
    finally:
        await backend.close()

    names = {ZHANG: "张伟", LI: "李娜"}
    assert [r.fields["name"] if r else None for r in records] == [names[s] for s in subjects]
