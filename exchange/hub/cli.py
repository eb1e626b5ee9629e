"""`exchange serve --config FILE`: run a hub until SIGINT or SIGTERM, then shut down gracefully."""

from __future__ import annotations

import argparse
import asyncio
import signal
from pathlib import Path

from exchange.config import HubConfig
from exchange.heap import freeze_startup_objects
from exchange.hub.server import build_hub

# Calls in flight get this long to finish after a stop signal.
SHUTDOWN_GRACE_SECONDS = 10.0


def add_cli(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add `exchange serve`."""
    parser = subparsers.add_parser(
        "serve",
        help="run the hub (LookupService, RegistryService, AuditService over mTLS)",
        description="Run the exchange hub until SIGINT or SIGTERM.",
    )
    parser.add_argument(
        "--config", type=Path, required=True, metavar="FILE", help="hub configuration (TOML)"
    )
    parser.set_defaults(run=run_serve)


def run_serve(args: argparse.Namespace) -> int:
    """Serve until a stop signal; 0 after a clean shutdown."""
    config = HubConfig.from_file(args.config)
    asyncio.run(serve(config))
    return 0


async def serve(config: HubConfig, stop: asyncio.Event | None = None) -> None:
    """Start a hub, print its address, and stop it gracefully once `stop` is set (or a signal)."""
    stop = stop or asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)
    hub = build_hub(config)
    try:
        await hub.start()
        freeze_startup_objects()
        print(f"exchange hub listening on {hub.address}", flush=True)
        await stop.wait()
        print("exchange hub stopping", flush=True)
    finally:
        await hub.stop(SHUTDOWN_GRACE_SECONDS)
        for signum in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(signum)
