"""Subject identifiers never reach the disk in clear; auditors still get them back."""

from __future__ import annotations

import asyncio
import base64
import json
from pathlib import Path

import pytest
import sqlalchemy as sa
from audit_world import lookup_event, resident

from audit.config import AuditConfig
from audit.keys import LogKeys, SealError
from audit.log import AuditLog
from exchange.db import make_engine, upgrade


async def test_sqlite_files_do_not_contain_resident_ids(
    tmp_path: Path, audit_config: AuditConfig
) -> None:
    database = tmp_path / "private.db"
    engine = make_engine(f"sqlite:///{database}")
    upgrade(engine)
    log = AuditLog.open(engine, audit_config)
    await log.start()
    await asyncio.gather(*(log.append(lookup_event(i)) for i in range(50)))
    await log.checkpoint(fresh=True)
    ids = [resident(i).id.encode() for i in range(50)]

    files = [database, database.with_name("private.db-wal")]
    content = b"".join(path.read_bytes() for path in files if path.exists())
    assert len(content) > 50 * 500  # the entries are really in there
    assert not [found for found in ids if found in content]

    await log.close()
    engine.dispose()
    content = b"".join(path.read_bytes() for path in files if path.exists())
    assert not [found for found in ids if found in content]


async def test_sealed_subject_opens_only_in_its_own_entry(
    audit_log: AuditLog, engine: sa.Engine, audit_config: AuditConfig
) -> None:
    await asyncio.gather(*(audit_log.append(lookup_event(i)) for i in range(3)))
    with engine.connect() as conn:
        leaves = [
            bytes(leaf)
            for (leaf,) in conn.exec_driver_sql("SELECT leaf FROM audit_entries ORDER BY idx")
        ]
    entries = [json.loads(leaf) for leaf in leaves]
    keys = LogKeys.load(audit_config)
    opened = {keys.unseal(base64.b64decode(e["subject_sealed"]), e["index"]).id for e in entries}

    assert opened == {resident(i).id for i in range(3)}
    assert {e["subject_ref"] for e in entries} == {keys.subject_ref(resident(i)) for i in range(3)}
    with pytest.raises(SealError):
        keys.unseal(base64.b64decode(entries[0]["subject_sealed"]), entries[1]["index"])
