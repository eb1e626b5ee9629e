"""Audit log throughput: durable appends/s (SQLite, optionally PostgreSQL) with concurrent
writers, and offline export verification in entries/s. Not a test: it prints numbers.

Each writer awaits one append at a time, so a commit holds at most `--writers` entries and
every cycle is serial: entries built on the event loop, sealed, stored and fsynced in the
writer thread, signed, handed back. "ms per commit" is the writer thread's time in each
transaction (sealing, inserting, committing); when it jumps between runs, the disk is busy.

    .venv/bin/python bench/audit_bench.py [--postgres postgresql://postgres@127.0.0.1/test]
        [--appends 40000] [--writers 64] [--verify-entries 300000]
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import tempfile
import time
import uuid
from pathlib import Path

import sqlalchemy as sa

from audit import entry, merkle
from audit.config import AuditConfig, create_keys
from audit.events import AuditEvent, EventKind, Outcome, SubjectId
from audit.export import checkpoint_line, entry_line
from audit.keys import LogKeys
from audit.log import AuditLog
from audit.signing import sign_checkpoint
from audit.verify import verify_export
from exchange.db import make_engine, upgrade

DEPARTMENTS = ("MCA", "HRSS", "NHC", "AMR", "PSB", "EDU", "TAX", "HOUSING")
TYPES = ("resident_identity", "birth_medical_certificate", "business_licence", "marriage_record")


def event(number: int) -> AuditEvent:
    """A realistic lookup entry (about 800 bytes of canonical JSON)."""
    return AuditEvent(
        event=EventKind.LOOKUP,
        outcome=Outcome.GRANTED if number % 10 else Outcome.REFUSED,
        status="OK" if number % 10 else "PERMISSION_DENIED",
        method="/exchange.v1.LookupService/Lookup",
        caller=f"counter-{number % 50}",
        requester_department=DEPARTMENTS[number % len(DEPARTMENTS)],
        role="department",
        operator_id=f"clerk-{number % 300}",
        subject=SubjectId("RESIDENT_ID", f"1101011990{number % 10**7:07d}X"[:18]),
        certificate_type=TYPES[number % len(TYPES)],
        issuer="PSB",
        fields_released=("name", "birth_date", "address"),
        purpose="birth_registration",
        matter_id=f"MCA-2024-{number:07d}",
        request_id=str(uuid.UUID(int=number)),
        latency_us=1500 + number % 1000,
        document_digest=f"{number:064x}",
    )


async def appends_per_second(
    engine: sa.Engine, config: AuditConfig, total: int, writers: int
) -> None:
    log = AuditLog.open(engine, config)
    await log.start()
    per_writer = total // writers
    # Built beforehand: making events is the caller's work, not the log's.
    events = [event(n) for n in range(per_writer * writers)]

    async def writer(w: int) -> None:
        for n in range(w * per_writer, (w + 1) * per_writer):
            await log.append(events[n])

    await asyncio.gather(*(log.append(event(i)) for i in range(200)))  # warm up
    before, storing_before = log.batches_committed, log.seconds_storing
    started, cpu_started = time.perf_counter(), time.process_time()
    await asyncio.gather(*(writer(w) for w in range(writers)))
    elapsed, cpu = time.perf_counter() - started, time.process_time() - cpu_started
    batches = log.batches_committed - before
    storing = log.seconds_storing - storing_before
    await log.close()
    count = per_writer * writers
    print(
        f"  {engine.dialect.name}: {count / elapsed:,.0f} durable appends/s "
        f"({count} appends, {writers} writers, {batches} commits, "
        f"{count / batches:.1f} entries per commit, {storing / batches * 1000:.2f} ms per "
        f"commit; this process used {cpu / count * 1e6:.0f} µs of CPU per append)"
    )


def postgres_engine(url: str) -> tuple[sa.Engine, sa.Engine, str]:
    admin = make_engine(url)
    schema = f"bench_{uuid.uuid4().hex[:10]}"
    with admin.begin() as conn:
        conn.execute(sa.text(f'CREATE SCHEMA "{schema}"'))
    separator = "&" if "?" in url else "?"
    return admin, make_engine(f"{url}{separator}options=-csearch_path%3D{schema}"), schema


def write_synthetic_export(path: Path, keys: LogKeys, count: int) -> None:
    frontier = merkle.Frontier()
    now = dt.datetime.now(dt.UTC)
    time_text = entry.format_time(now)
    with path.open("wb") as out:
        for index in range(count):
            sealed = entry.seal(entry.prepare(event(index), keys, time_text), index, keys)
            out.write(entry_line(index, sealed.leaf_hash, sealed.leaf))
            frontier.append(sealed.leaf_hash)
        out.write(checkpoint_line(sign_checkpoint(keys, count, frontier.root(), now)))


def verification_per_second(directory: Path, config: AuditConfig, count: int) -> None:
    path = directory / "export.jsonl"
    write_synthetic_export(path, LogKeys.load(config), count)
    best = 0.0
    for _ in range(3):
        started = time.perf_counter()
        result = verify_export(path, config.public_key)
        best = max(best, result.entries / (time.perf_counter() - started))
    size = path.stat().st_size / 1e6
    print(f"  verify: {best:,.0f} entries/s ({count} entries, {size:.0f} MB export, best of 3)")


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--postgres", help="PostgreSQL URL to benchmark as well")
    parser.add_argument("--appends", type=int, default=40_000)
    parser.add_argument("--writers", type=int, default=64)
    parser.add_argument("--verify-entries", type=int, default=300_000)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as temporary:
        directory = Path(temporary)
        config = create_keys(directory / "keys")
        print("audit log benchmark")
        engine = make_engine(f"sqlite:///{directory / 'bench.db'}")
        upgrade(engine)
        await appends_per_second(engine, config, args.appends, args.writers)
        engine.dispose()
        if args.postgres:
            admin, engine, schema = postgres_engine(args.postgres)
            try:
                upgrade(engine)
                await appends_per_second(engine, config, args.appends, args.writers)
            finally:
                engine.dispose()
                with admin.begin() as conn:
                    conn.execute(sa.text(f'DROP SCHEMA "{schema}" CASCADE'))
                admin.dispose()
        verification_per_second(directory, config, args.verify_entries)


if __name__ == "__main__":
    asyncio.run(main())
