"""`exchange demo`: the whole exchange on one machine, from nothing, in one command.

It creates a working directory with a local CA and every identity, four issuing departments
with synthetic records, starts the hub and one adapter node per department on loopback,
registers the catalogue as the administrator, performs a birth registration's lookups as
the service-centre counter (granted and refused), prints each result, and shuts down.
"""

from __future__ import annotations

import argparse
import asyncio
from contextlib import AsyncExitStack
from pathlib import Path

from adapters.config import AdapterConfig
from adapters.node import build_adapter_server
from audit.client import export_log, format_access_report
from audit.verify import verify_export
from exchange.config import HubConfig
from exchange.demo.catalogue import DEPARTMENTS
from exchange.demo.data import DemoPopulation
from exchange.demo.scenario import (
    Print,
    perform_lookups,
    plan_lookups,
    register_catalogue,
    secure_channel,
)
from exchange.demo.workspace import Workspace, create_workspace
from exchange.hub.server import build_hub
from exchange.pki import load_public_key_raw
from exchange.v1 import audit_pb2, audit_pb2_grpc, common_pb2


def add_cli(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add `exchange demo`."""
    parser = subparsers.add_parser(
        "demo", help="run the whole exchange on loopback and show granted and refused lookups"
    )
    parser.add_argument(
        "--dir", type=Path, default=Path(".demo"), help="working directory (default: .demo)"
    )
    parser.add_argument(
        "--kafka", metavar="HOST:PORT", help="also publish the audit log to this Kafka broker"
    )
    parser.set_defaults(run=lambda args: asyncio.run(run_demo(args.dir, args.kafka, print)))


async def run_demo(directory: Path, kafka: str | None, out: Print) -> int:
    """Run the demo end to end; 0 when every lookup behaved as planned and verified."""
    population = DemoPopulation()
    workspace = create_workspace(directory, population, kafka)
    out(f"Once-Only Exchange demo in {workspace.root}/")
    out(
        f"  local CA and identities in {workspace.root}/pki; records of "
        f"{len(population.people())} residents and {len(population.companies)} companies"
    )
    async with AsyncExitStack() as running:
        for department in DEPARTMENTS:
            config = AdapterConfig.from_file(workspace.node_configs[department.code])
            server, port = build_adapter_server(config)
            await server.start()
            running.push_async_callback(server.stop, 2)
            out(f"  adapter node {department.node:<12} 127.0.0.1:{port}  ({department.name})")
        hub = build_hub(HubConfig.from_file(workspace.hub_config))
        await hub.start()
        running.push_async_callback(hub.stop, 2)
        out(f"  hub                       {hub.address}  (registry and audit log in hub.db)")
        return await _story(workspace, hub.address, out)


async def _story(workspace: Workspace, hub: str, out: Print) -> int:
    issuer_keys = {
        d.code: load_public_key_raw(workspace.root / "keys" / f"{d.code.lower()}.sign.pub")
        for d in DEPARTMENTS
    }
    summary = await register_catalogue(hub, workspace.admin, workspace.node_ports, issuer_keys)
    out(f"\nRegistered as the administrator: {summary}")
    out("\nA birth registration at the service-centre counter (purpose birth_registration):")
    planned = plan_lookups(workspace.population)
    log_key = load_public_key_raw(workspace.audit_public_key)
    tally = await perform_lookups(hub, workspace.requester, planned, issuer_keys, log_key, out)
    log_ok = await _audit(workspace, hub, out)
    expected_granted = 5
    ok = tally.granted == expected_granted and tally.unverified == 0 and log_ok
    out(
        f"\ndemo {'ok' if ok else 'FAILED'}: {tally.lookups} lookups, "
        f"{tally.granted} granted, {tally.refused} refused"
    )
    return 0 if ok else 1


async def _audit(workspace: Workspace, hub: str, out: Print) -> bool:
    """As the auditor: the mother's access report, then the log exported and verified offline."""
    mother = workspace.population.families[0].mother.id
    export = workspace.root / "audit-log.jsonl"
    async with secure_channel(hub, workspace.auditor) as channel:
        auditor = audit_pb2_grpc.AuditServiceStub(channel)
        report = await auditor.SubjectAccessReport(
            audit_pb2.SubjectAccessReportRequest(
                subject=common_pb2.Subject(kind=common_pb2.RESIDENT_ID, id=mother)
            )
        )
        out("\nAs the auditor, every access to the mother's data (exchange audit report):")
        out(format_access_report(report.entries))
        await auditor.GetCheckpoint(audit_pb2.GetCheckpointRequest(fresh=True))
        await export_log(auditor, export)
    result = verify_export(export, workspace.audit_public_key)
    out(
        f"\nThe audit log exported to {export} and verified offline with the hub's public key:"
        f"\n  ok: {result.entries} entries, root {result.root.hex()}"
    )
    key = workspace.audit_public_key
    out(
        "\nTry it yourself (inside the virtualenv):"
        f"\n  exchange audit verify {export} --hub-key {key}"
        f"\n  exchange serve --config {workspace.hub_config}        # then, in another shell:"
        f"\n  exchange audit report --hub {workspace.hub_address} --ca {workspace.auditor.ca}"
        f" --cert {workspace.auditor.cert} --key {workspace.auditor.key} --subject {mother}"
    )
    return result.entries > 0
