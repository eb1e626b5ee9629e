"""verify_database checks the stored tree nodes, and an export reads checkpoints in chunks."""

from __future__ import annotations

import asyncio
import hashlib
import tracemalloc
from collections.abc import Callable
from typing import Any

import pytest
import sqlalchemy as sa
from audit_world import lookup_event

from audit import database_check
from audit.config import AuditConfig
from audit.database_check import verify_database
from audit.log import AuditLog
from audit.tables import audit_checkpoints, audit_entries, audit_tree_nodes
from audit.verify import VerificationError
from exchange.cli import main
from exchange.pki import load_public_key_raw

ENTRIES = 600
# The sequencer stores node (8, 0) in the round signing 300, (8, 1) and (9, 0) in the one
# signing 600: every complete subtree of 256 leaves or more.
CHECKPOINTS = (300, 600)


@pytest.fixture
async def filled(audit_log: AuditLog) -> AuditLog:
    done = 0
    for size in CHECKPOINTS:
        await asyncio.gather(*(audit_log.append(lookup_event(i)) for i in range(done, size)))
        await audit_log.checkpoint(fresh=True)
        done = size
    return audit_log


def set_node(level: int, position: int, digest: bytes) -> Callable[[sa.Connection], object]:
    nodes = audit_tree_nodes.c
    return lambda conn: conn.execute(
        audit_tree_nodes.update()
        .where(nodes.level == level, nodes.position == position)
        .values(hash=digest)
    )


def delete_node(level: int, position: int) -> Callable[[sa.Connection], object]:
    nodes = audit_tree_nodes.c
    return lambda conn: conn.execute(
        audit_tree_nodes.delete().where(nodes.level == level, nodes.position == position)
    )


def insert_node(level: int, position: int) -> Callable[[sa.Connection], object]:
    return lambda conn: conn.execute(
        audit_tree_nodes.insert().values(level=level, position=position, hash=b"\x01" * 32)
    )


@pytest.mark.parametrize(
    ("tamper", "named", "kind"),
    [
        # The reviewer's case: proofs for entries 0..255 and checkpoints signed on demand
        # below 512 are then computed from this node.
        (set_node(8, 0, b"\x00" * 32), "(level 8, position 0) for entries 0..255", "edited"),
        (set_node(9, 0, hashlib.sha256(b"forged").digest()), "(level 9, position 0)", "edited"),
        (delete_node(8, 1), "(level 8, position 1) for entries 256..511", "deleted"),
        # Entries 512..767: no checkpoint covers them all, so the sequencer never stored it.
        (insert_node(8, 2), "(level 8, position 2) for entries 512..767", "inserted"),
        (insert_node(3, 0), "(level 3, position 0)", "inserted"),
    ],
    ids=["zeroed", "altered", "deleted", "inserted-beyond", "inserted-below-a-tile"],
)
async def test_tampered_tree_node_is_named(
    filled: AuditLog,
    engine: sa.Engine,
    audit_config: AuditConfig,
    tamper: Callable[[sa.Connection], object],
    named: str,
    kind: str,
) -> None:
    public_key = load_public_key_raw(audit_config.public_key)
    assert verify_database(engine, public_key).tree_size == ENTRIES  # untouched nodes pass
    with engine.begin() as conn:
        tamper(conn)

    with pytest.raises(VerificationError) as failure:
        verify_database(engine, public_key)

    assert failure.value.index is None  # no entry is to blame
    assert "audit_tree_nodes" in failure.value.problem
    assert named in failure.value.problem and kind in failure.value.problem


async def test_a_round_the_hub_signs_while_the_check_runs_is_no_tampering(
    audit_log: AuditLog,
    engine: sa.Engine,
    audit_config: AuditConfig,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Operators run the check on a live hub: its sequencer may store tree nodes, index rows
    # and a checkpoint beyond the tree the check set out to verify.
    await asyncio.gather(*(audit_log.append(lookup_event(i)) for i in range(300)))
    await audit_log.checkpoint(fresh=True)
    await asyncio.gather(*(audit_log.append(lookup_event(i)) for i in range(300, 600)))
    start = database_check._TreeNodes.__init__

    def then_the_hub_signs_600(nodes: Any, engine: sa.Engine, signed_size: int) -> None:
        start(nodes, engine, signed_size)
        assert audit_log.sequencer.run(fresh=True) is not None

    monkeypatch.setattr(database_check._TreeNodes, "__init__", then_the_hub_signs_600)
    checked = verify_database(engine, load_public_key_raw(audit_config.public_key))
    monkeypatch.undo()

    assert checked.tree_size == 300  # what it set out to verify
    assert checked.entries == 600
    with engine.begin() as conn:  # a node beyond even the new checkpoint is still found
        insert_node(8, 3)(conn)
    with pytest.raises(VerificationError) as inserted:
        verify_database(engine, load_public_key_raw(audit_config.public_key))
    assert "(level 8, position 3)" in inserted.value.problem


async def test_cli_verify_database_prints_ok_or_what_is_wrong(
    filled: AuditLog,
    engine: sa.Engine,
    database_url: str,
    audit_config: AuditConfig,
    capsys: pytest.CaptureFixture[str],
) -> None:
    key = str(audit_config.public_key)
    assert main(["audit", "verify-database", database_url, "--hub-key", key]) == 0
    assert capsys.readouterr().out.startswith(f"ok: {ENTRIES} entries, root ")

    with engine.begin() as conn:
        set_node(8, 1, b"\x00" * 32)(conn)
    assert main(["audit", "verify-database", database_url, "--hub-key", key]) == 1
    assert capsys.readouterr().out.startswith(
        "FAILED: audit_tree_nodes: the node (level 8, position 1) for entries 256..511 differs"
    )

    empty = f"sqlite:///{audit_config.log_key.parent / 'empty.db'}"
    assert main(["audit", "verify-database", empty, "--hub-key", key]) == 1
    assert "cannot read the audit log" in capsys.readouterr().out


# Export memory: a log signs a checkpoint every 10 s while it grows, millions a year. Here
# each of CHECKPOINT_COUNT entries has a checkpoint of its own, and an export of them all
# must not hold every checkpoint at once: loading them all peaked at 38 MB (tracemalloc),
# reading them in chunks at 3.6 MB, on SQLite and PostgreSQL alike.
CHECKPOINT_COUNT = 50_000
PEAK_BOUND = 12_000_000


def short_leaf(index: int) -> dict[str, bytes]:
    leaf = b'{"index":%d}' % index
    return {"leaf": leaf, "leaf_hash": hashlib.sha256(b"\x00" + leaf).digest()}


async def test_export_over_many_checkpoints_keeps_memory_bounded(
    audit_log: AuditLog, engine: sa.Engine
) -> None:
    await audit_log.append(lookup_event(0))
    await audit_log.checkpoint(fresh=True)
    with engine.begin() as conn:  # what CHECKPOINT_COUNT sequencer rounds of one entry leave
        entry = conn.execute(sa.select(audit_entries)).one()._mapping
        checkpoint = conn.execute(sa.select(audit_checkpoints)).one()._mapping
        count = CHECKPOINT_COUNT
        conn.execute(
            audit_entries.insert(),  # short leaves: the checkpoints are what is measured
            [{**entry, "idx": i, **short_leaf(i)} for i in range(1, count)],
        )
        conn.execute(
            audit_checkpoints.insert(),
            [{**checkpoint, "tree_size": size} for size in range(2, count + 1)],
        )

    records = 0
    tracemalloc.start()
    try:
        for chunk in audit_log.reader.export_chunks():
            records += len(chunk)
            del chunk  # the caller holds one chunk at a time
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()

    assert records == 2 * CHECKPOINT_COUNT  # each entry, then the checkpoint it completes
    assert peak < PEAK_BOUND, f"peak {peak / 1e6:.1f} MB"
