"""`make bench` (`.venv/bin/python -m bench`): the hub against a bare gRPC baseline, on loopback.

It starts, each as a process of its own:
  (a) the baseline: forwarder -> echo server, plaintext, same messages (bench/baseline.py);
  (b) the real path: `exchange serve` (mutual TLS, registry, durable audit log; SQLite by
      default, PostgreSQL in a fresh schema with --postgres URL) and one `exchange adapter
      serve` node reading a SQLite file through its SQL backend and signing each document.
One async client (bench/load.py) drives both, concurrency after concurrency, and it prints
lookups/s, p50 and p99 latency, the hub/baseline ratio, the hub's RSS at start and end, and
the audit log's own figures (appends/s alone, verification entries/s, Kafka relay events/s).
`--soak N` then sends N more lookups and prints the hub's RSS every 10,000.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime as dt
import math
import os
import platform
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import grpc.aio
import sqlalchemy as sa

from bench import load, log_figures
from bench.processes import ServerProcess, adapter_process, hub_process
from bench.workspace import create_workspace, free_port, lookup_requests
from bench.workspace import register_catalogue as register
from exchange.db import normalise_url
from exchange.tls import channel_credentials
from exchange.v1 import lookup_pb2

SOAK_REPORT_EVERY = 10_000


@dataclass
class Measured:
    """One path at one concurrency, and the CPU time each process spent on it."""

    result: load.RunResult
    cpu_seconds: dict[str, float]  # server name -> CPU seconds
    client_cpu_seconds: float  # the load generator's
    loop_cpu_seconds: dict[str, float]  # server name -> CPU seconds of its event-loop thread

    @property
    def cpu_ms(self) -> dict[str, float]:
        """Server name -> CPU milliseconds per successful call."""
        calls = max(self.result.calls, 1)
        return {name: seconds * 1000 / calls for name, seconds in self.cpu_seconds.items()}

    @property
    def client_cpu_ms(self) -> float:
        """The load generator's CPU milliseconds per successful call."""
        return self.client_cpu_seconds * 1000 / max(self.result.calls, 1)

    def loop_busy(self, server: str) -> float:
        """The share of the run `server`'s event-loop thread spent on the CPU."""
        return self.loop_cpu_seconds[server] / self.result.seconds if self.result.seconds else 0.0

    def __add__(self, other: Measured) -> Measured:
        return Measured(
            self.result + other.result,
            {n: s + other.cpu_seconds.get(n, 0.0) for n, s in self.cpu_seconds.items()},
            self.client_cpu_seconds + other.client_cpu_seconds,
            {n: s + other.loop_cpu_seconds.get(n, 0.0) for n, s in self.loop_cpu_seconds.items()},
        )


@dataclass
class Comparison:
    """Baseline and hub, measured at one concurrency."""

    baseline: Measured
    hub: Measured
    round_ratios: list[float]  # the ratio in each round: how much the machine moved meanwhile

    @property
    def ratio(self) -> float:
        """Hub lookups/s over baseline lookups/s."""
        hub, baseline = self.hub.result.per_second, self.baseline.result.per_second
        return hub / baseline if baseline else 0.0


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    """The command line."""
    parser = argparse.ArgumentParser(
        prog="python -m bench", description=(__doc__ or "").splitlines()[0]
    )
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 16, 64])
    bound = parser.add_mutually_exclusive_group()
    bound.add_argument("--seconds", type=float, default=None, help="per run (default 8)")
    bound.add_argument("--calls", type=int, default=None, help="per run, instead of seconds")
    parser.add_argument("--warmup-seconds", type=float, default=1.5)
    parser.add_argument(
        "--rounds",
        type=int,
        default=4,
        help="each run is split into this many rounds, alternating baseline and hub (default 4)",
    )
    parser.add_argument("--postgres", metavar="URL", help="the hub's registry + audit log here")
    parser.add_argument("--soak", type=int, default=0, metavar="N", help="N lookups, RSS kept")
    parser.add_argument("--soak-concurrency", type=int, default=64)
    parser.add_argument("--no-log-figures", action="store_true", help="skip audit/Kafka figures")
    parser.add_argument("--audit-appends", type=int, default=40_000)
    parser.add_argument("--verify-entries", type=int, default=200_000)
    parser.add_argument("--kafka-entries", type=int, default=20_000)
    parser.add_argument("--dir", type=Path, help="keep the working files here (must not exist)")
    args = parser.parse_args(argv)
    if args.seconds is None and args.calls is None:
        args.seconds = 8.0
    if any(c < 1 for c in args.concurrency) or args.soak < 0 or args.rounds < 1:
        parser.error("concurrency and --rounds must be >= 1, --soak >= 0")
    return args


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark and print its table; 0 unless a run had failed calls."""
    args = parse_args(argv)
    with contextlib.ExitStack() as stack:
        root = args.dir or Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="bench-")))
        database, store = stack.enter_context(hub_database(args.postgres, root))
        ok = asyncio.run(measure(args, root, database, store))
    if not args.no_log_figures:
        print_log_figures(args)
    return 0 if ok else 1


@contextlib.contextmanager
def hub_database(postgres: str | None, root: Path) -> Iterator[tuple[str, str]]:
    """(database URL, description) for the hub: a SQLite file, or a fresh PostgreSQL schema
    that is dropped afterwards."""
    if not postgres:
        yield f"sqlite:///{root / 'hub.db'}", "SQLite file (WAL, synchronous=FULL)"
        return
    schema = f"bench_{uuid.uuid4().hex[:10]}"
    admin = sa.create_engine(normalise_url(postgres))
    with admin.begin() as conn:
        conn.execute(sa.text(f'CREATE SCHEMA "{schema}"'))
    separator = "&" if "?" in postgres else "?"
    try:
        yield (
            f"{postgres}{separator}options=-csearch_path%3D{schema}",
            f"PostgreSQL {admin.url.host}:{admin.url.port}/{admin.url.database} schema {schema}",
        )
    finally:
        with admin.begin() as conn:
            conn.execute(sa.text(f'DROP SCHEMA "{schema}" CASCADE'))
        admin.dispose()


async def measure(args: argparse.Namespace, root: Path, database: str, store: str) -> bool:
    """Start everything, run every concurrency on both paths, print the table."""
    workspace = create_workspace(root, database)
    servers: list[ServerProcess] = []
    comparisons: list[Comparison] = []
    soaked = True
    try:
        servers.append(adapter_process(workspace.adapter_config, root / "adapter.log").start())
        hub = hub_process(workspace.hub_config, root / "hub.log").start()
        servers.append(hub)
        await register(workspace)
        requests = lookup_requests(workspace.subjects)
        hub_channel = grpc.aio.secure_channel(
            workspace.hub_address, channel_credentials(workspace.requester)
        )
        hub_call = load.lookup_call(hub_channel)
        canned = await hub_call(requests[0])
        (root / "response.bin").write_bytes(canned.SerializeToString())
        baseline_servers = start_baseline(root, servers)
        baseline_address = baseline_servers[-1].address
        baseline_channel = grpc.aio.insecure_channel(baseline_address)
        baseline_call = load.lookup_call(baseline_channel)
        rss_start = hub.rss_mib()
        real_servers = [s for s in servers if s not in baseline_servers]
        paths = {
            "baseline": (baseline_call, baseline_servers),
            "hub": (hub_call, real_servers),
        }
        for concurrency in args.concurrency:
            comparisons.append(await compare(args, requests, concurrency, paths))
        rss_end = hub.rss_mib()
        print_table(args, store, comparisons, rss_start, rss_end)
        if args.soak:
            soaked = await soak(args, hub, hub_call, requests)
        await hub_channel.close()
        await baseline_channel.close()
    finally:
        for server in reversed(servers):
            server.stop()
    failed = any(c.baseline.result.errors or c.hub.result.errors for c in comparisons)
    return soaked and not failed


async def compare(
    args: argparse.Namespace,
    requests: list[lookup_pb2.LookupRequest],
    concurrency: int,
    paths: dict[str, tuple[load.Call, list[ServerProcess]]],
) -> Comparison:
    """Both paths at `concurrency`: warmed up, then measured in alternating rounds, so that
    whatever else the machine does at some moment weighs on both alike."""
    for call, _ in paths.values():
        await load.run(call, requests, concurrency, seconds=args.warmup_seconds, warmup_seconds=0)
    rounds = args.rounds
    seconds = args.seconds / rounds if args.seconds is not None else None
    calls = -(-args.calls // rounds) if args.calls is not None else None
    measured: dict[str, Measured] = {}
    round_ratios = []
    for _ in range(rounds):
        this_round: dict[str, float] = {}
        for name, (call, servers) in paths.items():
            part = await measured_run(call, requests, concurrency, servers, seconds, calls)
            measured[name] = measured[name] + part if name in measured else part
            this_round[name] = part.result.per_second
        if this_round["baseline"]:
            round_ratios.append(this_round["hub"] / this_round["baseline"])
    return Comparison(measured["baseline"], measured["hub"], round_ratios)


async def measured_run(
    call: load.Call,
    requests: list[lookup_pb2.LookupRequest],
    concurrency: int,
    servers: list[ServerProcess],
    seconds: float | None,
    calls: int | None,
) -> Measured:
    """One bounded run, with the CPU time `servers` and this process spent on it."""
    before = {server.name: server.cpu_seconds() for server in servers}
    loop_before = {server.name: server.loop_cpu_seconds() for server in servers}
    client_before = time.process_time()
    result = await load.run(
        call, requests, concurrency, seconds=seconds, calls=calls, warmup_seconds=0
    )
    return Measured(
        result,
        {server.name: server.cpu_seconds() - before[server.name] for server in servers},
        time.process_time() - client_before,
        {s.name: s.loop_cpu_seconds() - loop_before[s.name] for s in servers},
    )


def start_baseline(root: Path, servers: list[ServerProcess]) -> list[ServerProcess]:
    """Start the echo server and the forwarder (last); both are added to `servers` too."""
    echo_address = f"127.0.0.1:{free_port()}"
    forward_address = f"127.0.0.1:{free_port()}"
    response = str(root / "response.bin")
    baseline = [sys.executable, "-m", "bench.baseline"]
    echo = ServerProcess(
        "echo",
        [*baseline, "echo", "--listen", echo_address, "--response", response],
        root / "echo.log",
        "listening on",
        echo_address,
    )
    forwarder = ServerProcess(
        "forwarder",
        [
            *baseline,
            "forward",
            "--listen",
            forward_address,
            "--upstream",
            echo_address,
            "--response",
            response,
        ],
        root / "forward.log",
        "listening on",
        forward_address,
    )
    started = [echo.start(), forwarder.start()]
    servers.extend(started)
    return started


def cpu_gauge(additions: int = 5_000_000) -> float:
    """Seconds one core takes for `additions` pure-Python additions, best of three: how fast
    this machine was, to compare runs taken on different days (the VM's speed varies)."""
    best = math.inf
    for _ in range(3):
        started = time.perf_counter()
        total = 0
        for number in range(additions):
            total += number
        best = min(best, time.perf_counter() - started)
    return best


def print_table(
    args: argparse.Namespace,
    store: str,
    comparisons: list[Comparison],
    rss_start: float,
    rss_end: float,
) -> None:
    """The benchmark's table and what it was measured on."""
    now = dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC")
    bound = f"{args.seconds:g} s" if args.seconds is not None else f"{args.calls} calls"
    print(f"Once-Only Exchange benchmark, {now}")
    print(
        f"machine: {os.cpu_count()} cores, {platform.processor() or platform.machine()}, "
        f"Python {platform.python_version()}, grpcio {grpc.__version__}; "
        f"CPU gauge: 5M Python additions in {cpu_gauge():.2f} s"
    )
    print(
        f"each run: {bound} in {args.rounds} rounds alternating baseline and hub, after "
        f"{args.warmup_seconds:g} s warm-up; one grpc.aio channel per path"
    )
    print(f"hub registry + audit log: {store}")
    print("adapter node backend: SQL (SQLite file), Ed25519 signature checked by the hub")
    print()
    print(
        f"{'':>11} | {'baseline: forwarder -> echo':^40} | "
        f"{'hub (mTLS, audit) -> adapter node':^40} |"
    )
    print(
        f"{'concurrency':>11} | {'lookups/s':>9} {'p50 ms':>7} {'p99 ms':>7} {'CPU ms/call':>14} | "
        f"{'lookups/s':>9} {'p50 ms':>7} {'p99 ms':>7} {'CPU ms/call':>14} | {'hub/baseline':>12}"
    )
    for c in comparisons:
        print(
            f"{c.hub.result.concurrency:>11} | {_figures(c.baseline)} | {_figures(c.hub)} | "
            f"{c.ratio:>12.2f}"
        )
        for name, measured in (("baseline", c.baseline), ("hub", c.hub)):
            result = measured.result
            if result.errors:
                print(f"{'':>11}   {name}: {result.errors} failed calls, e.g. {result.first_error}")
    print("CPU ms/call: forwarder+echo for the baseline, hub+adapter for the hub")
    client = [c.baseline.client_cpu_ms for c in comparisons] + [
        c.hub.client_cpu_ms for c in comparisons
    ]
    print(f"load generator CPU ms/call: {min(client):.2f} to {max(client):.2f}")
    # Each server's Python runs on its event-loop thread under one GIL (the hub's audit
    # threads take turns with it): a loop busy near 100% is that process's ceiling.
    busy = ", ".join(
        f"{c.baseline.loop_busy('forwarder'):.0%} | {c.hub.loop_busy('hub'):.0%} at "
        f"{c.hub.result.concurrency}"
        for c in comparisons
    )
    print(f"event-loop thread busy, forwarder | hub: {busy}")
    spread = ", ".join(
        f"{min(c.round_ratios):.2f} to {max(c.round_ratios):.2f} at {c.hub.result.concurrency}"
        for c in comparisons
        if c.round_ratios
    )
    if spread:
        print(f"hub/baseline round by round: {spread}")
    print(f"hub RSS: {rss_start:.1f} MiB at start, {rss_end:.1f} MiB at end")
    sys.stdout.flush()


def _server_order(item: tuple[str, float]) -> int:
    order = ("forwarder", "echo", "hub", "adapter")
    return order.index(item[0]) if item[0] in order else len(order)


def _figures(measured: Measured) -> str:
    result = measured.result
    cpu = "+".join(f"{ms:.2f}" for _, ms in sorted(measured.cpu_ms.items(), key=_server_order))
    return (
        f"{result.per_second:>9,.0f} {result.percentile_ms(0.5):>7.2f} "
        f"{result.percentile_ms(0.99):>7.2f} {cpu:>14}"
    )


async def soak(
    args: argparse.Namespace,
    hub: ServerProcess,
    call: load.Call,
    requests: list[lookup_pb2.LookupRequest],
) -> bool:
    """`--soak N`: N lookups in rounds of 10,000, printing the hub's RSS after each."""
    print(f"\nsoak: {args.soak:,} lookups at concurrency {args.soak_concurrency}")
    print(f"{'lookups':>9} {'hub RSS MiB':>12} {'lookups/s':>10}")
    print(f"{0:>9,} {hub.rss_mib():>12.1f}")
    done, failures = 0, 0
    while done < args.soak:
        count = min(SOAK_REPORT_EVERY, args.soak - done)
        result = await load.run(
            call, requests, args.soak_concurrency, calls=count, warmup_seconds=0
        )
        done += count
        failures += result.errors
        print(f"{done:>9,} {hub.rss_mib():>12.1f} {result.per_second:>10,.0f}", flush=True)
    if failures:
        print(f"soak: {failures} failed lookups")
    return failures == 0


def print_log_figures(args: argparse.Namespace) -> None:
    """The audit log measured alone (bench/audit_bench.py, bench/kafka_bench.py)."""
    print("\naudit log alone (bench/audit_bench.py, bench/kafka_bench.py):", flush=True)
    figures = log_figures.measure(
        args.postgres, args.audit_appends, args.verify_entries, args.kafka_entries
    )
    for store, figure in figures.appends.items():
        print(f"  durable appends, {store}: {figure}")
    if figures.verify:
        print(f"  export verification: {figures.verify}")
    for batch, rate in figures.relay.items():
        print(f"  Kafka relay (SQLite log, batch {batch}): {rate} events/s")
    for problem in figures.problems:
        print(f"  not measured: {problem}")
