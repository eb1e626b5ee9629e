"""Tampering with the stored log or with an export is found, and the right index named."""

from __future__ import annotations

import asyncio
import hashlib
import json
from pathlib import Path

import pytest
import rfc6962
import sqlalchemy as sa
from audit_world import lookup_event

from audit.config import AuditConfig
from audit.database_check import verify_database
from audit.export import write_export_async
from audit.log import AuditLog
from audit.tables import audit_entries, audit_query_index
from audit.verify import VerificationError, verify_export
from exchange.cli import main
from exchange.pki import load_public_key_raw

ENTRIES = 90
CHECKPOINTS = (30, 60, 90)


async def fill(log: AuditLog) -> None:
    """90 entries with signed checkpoints at 30, 60 and 90."""
    for size in CHECKPOINTS:
        start = size - 30
        await asyncio.gather(*(log.append(lookup_event(i)) for i in range(start, size)))
        await log.checkpoint(fresh=True)


@pytest.fixture
async def filled(audit_log: AuditLog) -> AuditLog:
    await fill(audit_log)
    return audit_log


def public_key(config: AuditConfig) -> bytes:
    return load_public_key_raw(config.public_key)


def failure_in_database(engine: sa.Engine, config: AuditConfig) -> VerificationError:
    with pytest.raises(VerificationError) as failure:
        verify_database(engine, public_key(config))
    return failure.value


def row(engine: sa.Engine, index: int) -> dict[str, object]:
    with engine.connect() as conn:
        found = conn.execute(sa.select(audit_entries).where(audit_entries.c.idx == index)).one()
    return dict(found._mapping)


def update(engine: sa.Engine, index: int, **values: object) -> None:
    with engine.begin() as conn:
        conn.execute(audit_entries.update().where(audit_entries.c.idx == index).values(**values))


# --- the database ------------------------------------------------------------------------


async def test_untouched_database_verifies(
    filled: AuditLog, engine: sa.Engine, audit_config: AuditConfig
) -> None:
    result = verify_database(engine, public_key(audit_config))
    assert (result.entries, result.tree_size) == (ENTRIES, ENTRIES)


async def test_edited_leaf_is_named(
    filled: AuditLog, engine: sa.Engine, audit_config: AuditConfig
) -> None:
    leaf = bytes(row(engine, 42)["leaf"]).replace(b'"purpose":"birth', b'"purpose":"BIRTH')
    update(engine, 42, leaf=leaf)
    failure = failure_in_database(engine, audit_config)
    assert failure.index == 42 and "edited" in failure.problem


async def test_edited_query_column_is_named(
    filled: AuditLog, engine: sa.Engine, audit_config: AuditConfig
) -> None:
    update(engine, 17, requester_department="HRSS")
    failure = failure_in_database(engine, audit_config)
    assert failure.index == 17 and "requester_department" in failure.problem


async def test_edited_query_index_is_named(
    filled: AuditLog, engine: sa.Engine, audit_config: AuditConfig
) -> None:
    with engine.begin() as conn:
        conn.execute(
            audit_query_index.update()
            .where(audit_query_index.c.idx == 23)
            .values(subject_ref="0" * 64)  # hides entry 23 from a subject access report
        )
    failure = failure_in_database(engine, audit_config)
    assert failure.index == 23 and "audit_query_index" in failure.problem


async def test_deleted_row_is_named(
    filled: AuditLog, engine: sa.Engine, audit_config: AuditConfig
) -> None:
    with engine.begin() as conn:
        conn.execute(audit_entries.delete().where(audit_entries.c.idx == 30))
    failure = failure_in_database(engine, audit_config)
    assert failure.index == 30 and "deleted" in failure.problem


async def test_deleted_last_rows_are_found(
    filled: AuditLog, engine: sa.Engine, audit_config: AuditConfig
) -> None:
    with engine.begin() as conn:
        conn.execute(audit_entries.delete().where(audit_entries.c.idx >= 85))
    failure = failure_in_database(engine, audit_config)
    assert failure.index == 85 and "deleted" in failure.problem


async def test_swapped_rows_are_named(
    filled: AuditLog, engine: sa.Engine, audit_config: AuditConfig
) -> None:
    first, second = row(engine, 10), row(engine, 20)
    content = [name for name in first if name != "idx"]
    update(engine, 10, **{name: second[name] for name in content})
    update(engine, 20, **{name: first[name] for name in content})
    failure = failure_in_database(engine, audit_config)
    assert failure.index == 10 and "index 20" in failure.problem


async def test_inserted_row_is_named(
    filled: AuditLog, engine: sa.Engine, audit_config: AuditConfig
) -> None:
    copy = row(engine, 5)
    copy["idx"] = ENTRIES
    with engine.begin() as conn:
        conn.execute(audit_entries.insert().values(**copy))
    failure = failure_in_database(engine, audit_config)
    assert failure.index == ENTRIES and "index 5" in failure.problem


async def test_consistent_forgery_is_localised_by_checkpoints(
    filled: AuditLog, engine: sa.Engine, audit_config: AuditConfig
) -> None:
    leaf = bytes(row(engine, 42)["leaf"]).replace(b'"caller":"mca', b'"caller":"MCA')
    update(engine, 42, leaf=leaf, leaf_hash=rfc6962.leaf(leaf))
    failure = failure_in_database(engine, audit_config)
    assert failure.index == 30 and "30..59" in failure.problem


# --- exports -----------------------------------------------------------------------------


@pytest.fixture
async def export(filled: AuditLog, tmp_path: Path) -> Path:
    path = tmp_path / "audit.jsonl"
    with path.open("wb") as out:
        await write_export_async(filled.export_records(), out)
    return path


def lines(path: Path) -> list[bytes]:
    return path.read_bytes().splitlines(keepends=True)


def rewrite(path: Path, new_lines: list[bytes]) -> None:
    path.write_bytes(b"".join(new_lines))


def entry_line_number(path: Path, index: int) -> int:
    for number, line in enumerate(lines(path)):
        if line.startswith(b'{"index":%d,' % index):
            return number
    raise AssertionError(f"no line for entry {index}")


def failure_in_export(path: Path, config: AuditConfig) -> VerificationError:
    with pytest.raises(VerificationError) as failure:
        verify_export(path, config.public_key)
    return failure.value


async def test_untouched_export_verifies(export: Path, audit_config: AuditConfig) -> None:
    result = verify_export(export, audit_config.public_key)
    assert (result.entries, result.tree_size) == (ENTRIES, ENTRIES)
    # One line per entry plus the three checkpoints, each right after the entry completing it.
    content = lines(export)
    assert len(content) == ENTRIES + len(CHECKPOINTS)
    assert content[30].startswith(b'{"checkpoint":') and content[-1].startswith(b'{"checkpoint":')
    record = json.loads(content[0])
    assert record["index"] == 0 and record["entry"]["index"] == 0
    assert bytes.fromhex(record["leaf_hash"]) == rfc6962.leaf(
        json.dumps(
            record["entry"], sort_keys=True, separators=(",", ":"), ensure_ascii=False
        ).encode()
    )


async def test_export_with_one_byte_edited_names_the_entry(
    export: Path, audit_config: AuditConfig
) -> None:
    content = lines(export)
    number = entry_line_number(export, 57)
    content[number] = content[number].replace(b'"caller":"mca', b'"caller":"mcb')
    rewrite(export, content)
    failure = failure_in_export(export, audit_config)
    assert failure.index == 57 and "edited" in failure.problem


async def test_export_with_a_line_deleted_names_the_entry(
    export: Path, audit_config: AuditConfig
) -> None:
    content = lines(export)
    del content[entry_line_number(export, 12)]
    rewrite(export, content)
    assert failure_in_export(export, audit_config).index == 12


async def test_export_with_lines_swapped_names_the_entry(
    export: Path, audit_config: AuditConfig
) -> None:
    content = lines(export)
    a, b = entry_line_number(export, 3), entry_line_number(export, 8)
    content[a], content[b] = content[b], content[a]
    rewrite(export, content)
    assert failure_in_export(export, audit_config).index == 3


async def test_export_with_a_line_inserted_names_the_position(
    export: Path, audit_config: AuditConfig
) -> None:
    content = lines(export)
    content.insert(entry_line_number(export, 70), content[entry_line_number(export, 69)])
    rewrite(export, content)
    assert failure_in_export(export, audit_config).index == 70


async def test_export_forged_consistently_is_localised(
    export: Path, audit_config: AuditConfig
) -> None:
    content = lines(export)
    number = entry_line_number(export, 75)
    record = json.loads(content[number])
    record["entry"]["purpose"] = "something_else"
    leaf = json.dumps(
        record["entry"], sort_keys=True, separators=(",", ":"), ensure_ascii=False
    ).encode()
    content[number] = b'{"index":75,"leaf_hash":"%s","entry":%s}\n' % (
        rfc6962.leaf(leaf).hex().encode(),
        leaf,
    )
    rewrite(export, content)
    failure = failure_in_export(export, audit_config)
    assert failure.index == 60 and "60..89" in failure.problem


async def test_export_with_a_forged_checkpoint_signature_fails(
    export: Path, audit_config: AuditConfig
) -> None:
    content = lines(export)
    record = json.loads(content[-1])
    signature = bytearray(record["checkpoint"]["signature"].encode())
    signature[5] = ord("A") if signature[5] != ord("A") else ord("B")
    record["checkpoint"]["signature"] = signature.decode()
    content[-1] = json.dumps(record).encode() + b"\n"
    rewrite(export, content)
    assert "signature" in failure_in_export(export, audit_config).problem


async def test_export_checked_with_another_key_fails(export: Path, tmp_path: Path) -> None:
    from audit.config import create_keys

    other = create_keys(tmp_path / "other")
    assert "key" in failure_in_export(export, other).problem


async def test_truncated_export_fails(export: Path, audit_config: AuditConfig) -> None:
    rewrite(export, lines(export)[:-1])  # the final checkpoint is gone
    failure = failure_in_export(export, audit_config)
    assert failure.index == 60 and "not covered" in failure.problem


@pytest.mark.parametrize("after", [30, -1], ids=["first-checkpoint", "final-checkpoint"])
async def test_export_with_an_entry_added_to_a_checkpoint_line_fails(
    export: Path, audit_config: AuditConfig, after: int
) -> None:
    content = lines(export)
    # A copy of a real checkpoint line that also carries a forged entry: a verifier reading
    # only its checkpoint would pass it, while a line-by-line reader sees one entry more.
    smuggled = json.loads(content[after])
    forged = json.loads(content[entry_line_number(export, 29)])["entry"]
    forged["requester_department"] = "ATTACKER"
    leaf = json.dumps(forged, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    smuggled.update(index=29, leaf_hash=rfc6962.leaf(leaf.encode()).hex(), entry=forged)
    position = len(content) if after == -1 else after + 1
    content.insert(position, json.dumps(smuggled, sort_keys=True).encode() + b"\n")
    rewrite(export, content)
    failure = failure_in_export(export, audit_config)
    assert failure.index == (ENTRIES if after == -1 else 30)
    assert f"line {position + 1}" in failure.problem and "leaf_hash" in failure.problem


@pytest.mark.parametrize(
    ("key", "original", "repeated"),
    [
        ("caller", b'"entry": {"caller": ', b'"entry": {"caller": "FORGED", "caller": '),
        ("index", b'{"index": 57, ', b'{"index": 3, "index": 57, '),
    ],
    ids=["inside-entry", "top-level"],
)
async def test_export_entry_line_with_a_repeated_key_fails(
    export: Path, audit_config: AuditConfig, key: str, original: bytes, repeated: bytes
) -> None:
    # Python's json keeps a repeated key's last value, other readers its first: the line
    # must be refused, not read the one way that matches the leaf hash.
    content = lines(export)
    number = entry_line_number(export, 57)
    line = json.dumps(json.loads(content[number])).encode() + b"\n"  # another tool's layout
    assert original in line
    content[number] = line.replace(original, repeated, 1)
    rewrite(export, content)
    failure = failure_in_export(export, audit_config)
    assert failure.index == 57 and f"line {number + 1}" in failure.problem
    assert f"{key!r} twice" in failure.problem


async def test_export_entry_line_with_an_extra_key_fails(
    export: Path, audit_config: AuditConfig
) -> None:
    content = lines(export)
    number = entry_line_number(export, 57)
    record = json.loads(content[number])
    record["note"] = "approved by the data protection officer"
    content[number] = json.dumps(record).encode() + b"\n"
    rewrite(export, content)
    failure = failure_in_export(export, audit_config)
    assert failure.index == 57 and f"line {number + 1}" in failure.problem
    assert "note" in failure.problem


async def test_export_rewritten_by_another_json_tool_still_verifies(
    export: Path, audit_config: AuditConfig
) -> None:
    rewritten = [
        json.dumps(json.loads(line), indent=None).encode() + b"\n" for line in lines(export)
    ]
    rewrite(export, rewritten)
    assert verify_export(export, audit_config.public_key).entries == ENTRIES


async def test_partial_export_verifies_from_its_frontier(
    filled: AuditLog, tmp_path: Path, audit_config: AuditConfig
) -> None:
    path = tmp_path / "part.jsonl"
    with path.open("wb") as out:
        await write_export_async(filled.export_records(37, 81), out)
    result = verify_export(path, audit_config.public_key)
    assert (result.first_index, result.entries, result.tree_size) == (37, 44, 81)


async def test_entries_slipped_in_before_a_partial_export_are_caught(
    filled: AuditLog, tmp_path: Path, audit_config: AuditConfig
) -> None:
    path = tmp_path / "part.jsonl"
    with path.open("wb") as out:
        await write_export_async(filled.export_records(37, 81), out)
    content = lines(path)
    # A forged entry numbered from 0, well-formed and with a matching leaf hash, placed
    # between the frontier (entries 0..36) and the real entry 37.
    leaf = b'{"caller":"FORGED","index":0}'
    forged = (
        b'{"index":0,"leaf_hash":"'
        + hashlib.sha256(b"\x00" + leaf).hexdigest().encode()
        + b'","entry":'
        + leaf
        + b"}\n"
    )
    rewrite(path, [content[0], forged, *content[1:]])

    with pytest.raises(VerificationError) as failure:
        verify_export(path, audit_config.public_key)
    assert failure.value.index == 37


async def test_cli_verify_prints_ok_or_the_failing_index(
    export: Path, audit_config: AuditConfig, capsys: pytest.CaptureFixture[str]
) -> None:
    arguments = ["audit", "verify", str(export), "--hub-key", str(audit_config.public_key)]
    assert main(arguments) == 0
    assert capsys.readouterr().out.startswith(f"ok: {ENTRIES} entries, root ")

    content = lines(export)
    del content[entry_line_number(export, 44)]
    rewrite(export, content)
    assert main(arguments) == 1
    assert capsys.readouterr().out.startswith("FAILED at index 44: ")
