"""`exchange adapter serve --config FILE`: run a department's adapter node until told to stop.

SIGINT or SIGTERM starts a graceful shutdown: health turns NOT_SERVING, calls in flight get
`shutdown_grace_seconds` to finish, then the backend is closed.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal
from pathlib import Path

from adapters.config import AdapterConfig
from adapters.node import build_adapter_server
from exchange.heap import freeze_startup_objects

log = logging.getLogger(__name__)


def add_cli(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add `exchange adapter serve`."""
    adapter = subparsers.add_parser("adapter", help="run a department's adapter node")
    commands = adapter.add_subparsers(dest="adapter_command", required=True, metavar="COMMAND")
    serve = commands.add_parser(
        "serve", help="serve AdapterService to the hub over mutual TLS until SIGINT/SIGTERM"
    )
    serve.add_argument("--config", type=Path, required=True, help="adapter node TOML file")
    serve.set_defaults(run=_run_serve)


def _run_serve(args: argparse.Namespace) -> int:
    config = AdapterConfig.from_file(args.config)
    asyncio.run(serve(config))
    return 0


async def serve(config: AdapterConfig) -> None:
    """Serve until SIGINT or SIGTERM, then shut down gracefully."""
    server, port = build_adapter_server(config)
    await server.start()
    freeze_startup_objects()
    stopping = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stopping.set)
    host = config.listen.rpartition(":")[0]
    # Printed as well as logged: with port 0 this line is how a supervisor learns the port.
    print(f"adapter node {config.department} listening on {host}:{port}", flush=True)
    log.info("adapter node %s listening on %s:%d", config.department, host, port)
    try:
        await stopping.wait()
    finally:
        log.info("adapter node %s shutting down", config.department)
        await server.stop(config.shutdown_grace_seconds)
        for signum in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(signum)
