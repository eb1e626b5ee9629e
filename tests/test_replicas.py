"""Two hub replicas, real processes, sharing one PostgreSQL registry and audit log and one
Kafka topic, in front of one adapter node.

What an operator scaling out relies on: both replicas answer lookups at the same time; a
registry change made through one replica governs the other's very next call; and what they
wrote is ONE audit log, verifiable offline, every call in it exactly once, published to the
topic exactly once per index.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import grpc.aio
import pytest
from kafka import KafkaConsumer, TopicPartition
from kafka_fixture import KafkaBroker

from audit.verify import verify_export
from bench.processes import ServerProcess, adapter_process, hub_process
from bench.workspace import (
    CERTIFICATE_TYPE,
    GRANTED,
    REQUESTER,
    Workspace,
    create_workspace,
    data_source,
    free_port,
    lookup_requests,
    register_catalogue,
)
from exchange.cli import main as exchange_cli
from exchange.tls import TlsFiles, channel_credentials
from exchange.v1 import lookup_pb2, lookup_pb2_grpc, registry_pb2, registry_pb2_grpc

pytestmark = [pytest.mark.postgres, pytest.mark.kafka]

TOPIC = "exchange.audit.replicas"
LOOKUPS_PER_REPLICA = 40
WORKERS_PER_REPLICA = 8
OTHER_PURPOSE = "social_assistance"
DEADLINE_S = 60.0


@dataclass
class Replicas:
    workspace: Workspace
    a: str  # host:port of hub A
    b: str  # host:port of hub B
    processes: list[ServerProcess]
    channels: list[grpc.aio.Channel] = field(default_factory=list)

    def lookup(self, hub: str) -> lookup_pb2_grpc.LookupServiceStub:
        return lookup_pb2_grpc.LookupServiceStub(self._channel(hub, self.workspace.requester))

    def registry(self, hub: str) -> registry_pb2_grpc.RegistryServiceStub:
        return registry_pb2_grpc.RegistryServiceStub(self._channel(hub, self.workspace.admin))

    def _channel(self, hub: str, tls: TlsFiles) -> grpc.aio.Channel:
        channel = grpc.aio.secure_channel(hub, channel_credentials(tls))
        self.channels.append(channel)
        return channel

    async def close_channels(self) -> None:
        for channel in self.channels:
            await channel.close()


@pytest.fixture
def replicas(postgres_url: str, kafka_broker: KafkaBroker, tmp_path: Path) -> Iterator[Replicas]:
    """An adapter node and two `exchange serve` processes on one database and one topic."""
    workspace = create_workspace(tmp_path, postgres_url, subjects=50)
    kafka = f'\n[kafka]\nbootstrap_servers = "{kafka_broker.bootstrap}"\ntopic = "{TOPIC}"\n'
    config_a = workspace.hub_config.read_text("utf-8") + kafka
    workspace.hub_config.write_text(config_a, "utf-8")
    b = f"127.0.0.1:{free_port()}"
    config_b = tmp_path / "hub-b.toml"
    config_b.write_text(config_a.replace(workspace.hub_address, b), "utf-8")
    processes: list[ServerProcess] = []
    try:
        processes.append(adapter_process(workspace.adapter_config, tmp_path / "adapter.log"))
        # One after the other: each runs the migrations at start.
        processes.append(hub_process(workspace.hub_config, tmp_path / "hub-a.log", "hub A"))
        processes.append(hub_process(config_b, tmp_path / "hub-b.log", "hub B"))
        for process in processes:
            process.start()
        yield Replicas(workspace, workspace.hub_address, b, processes)
    finally:
        for process in reversed(processes):
            process.stop()


def request(
    subjects: tuple[str, ...], number: int, call: str, purpose: str = ""
) -> lookup_pb2.LookupRequest:
    """A granted lookup (unless `purpose` says otherwise) whose request id names the call."""
    made = lookup_requests((subjects[number % len(subjects)],))[0]
    made.request_id = f"{call}-{number:04d}"
    if purpose:
        made.purpose = purpose
    return made


async def test_two_replicas_share_one_registry_and_one_audit_log(
    replicas: Replicas, kafka_broker: KafkaBroker, tmp_path: Path
) -> None:
    try:
        await replicas_share_one_registry_and_one_audit_log(replicas, kafka_broker, tmp_path)
    finally:
        await replicas.close_channels()


async def replicas_share_one_registry_and_one_audit_log(
    replicas: Replicas, kafka_broker: KafkaBroker, tmp_path: Path
) -> None:
    subjects = replicas.workspace.subjects
    await register_catalogue(replicas.workspace, replicas.a)
    registry_changes = 5  # two departments, the type, the data source, the grant
    sent: list[str] = []

    # Both replicas serve lookups at the same time, and every one is granted.
    async def burst(hub: str, name: str) -> list[lookup_pb2.LookupResponse]:
        stub = replicas.lookup(hub)
        numbers = iter(range(LOOKUPS_PER_REPLICA))
        responses = []

        async def worker() -> None:
            for number in numbers:
                call = request(subjects, number, name)
                sent.append(call.request_id)
                responses.append(await stub.Lookup(call, timeout=30))

        await asyncio.gather(*(worker() for _ in range(WORKERS_PER_REPLICA)))
        return responses

    answers = await asyncio.gather(burst(replicas.a, "a"), burst(replicas.b, "b"))
    for responses in answers:
        assert len(responses) == LOOKUPS_PER_REPLICA
        assert all(r.document.payload and r.receipt.signature for r in responses)
    receipts = sorted(r.receipt.entry_index for responses in answers for r in responses)
    assert len(set(receipts)) == len(receipts), "two lookups got the same audit entry"

    # A grant added through A governs B's very next call.
    at_b = replicas.lookup(replicas.b)
    refused = request(subjects, 0, "b-before-grant", OTHER_PURPOSE)
    sent.append(refused.request_id)
    with pytest.raises(grpc.aio.AioRpcError) as before:
        await at_b.Lookup(refused, timeout=30)
    assert before.value.code() == grpc.StatusCode.PERMISSION_DENIED
    await replicas.registry(replicas.a).RegisterGrant(
        registry_pb2.Grant(
            requesting_department=REQUESTER,
            certificate_type=CERTIFICATE_TYPE,
            fields=GRANTED,
            purposes=[OTHER_PURPOSE],
        )
    )
    granted = request(subjects, 1, "b-after-grant", OTHER_PURPOSE)
    sent.append(granted.request_id)
    assert (await at_b.Lookup(granted, timeout=30)).document.payload

    # The data source disabled through A is disabled for B's very next call; re-enabled
    # through B, it is back for A's very next call.
    await replicas.registry(replicas.a).UpdateDataSource(
        data_source(replicas.workspace, enabled=False)
    )
    disabled = request(subjects, 2, "b-disabled")
    sent.append(disabled.request_id)
    with pytest.raises(grpc.aio.AioRpcError) as off:
        await at_b.Lookup(disabled, timeout=30)
    assert off.value.code() == grpc.StatusCode.UNAVAILABLE
    await replicas.registry(replicas.b).UpdateDataSource(
        data_source(replicas.workspace, enabled=True)
    )
    enabled = request(subjects, 3, "a-enabled")
    sent.append(enabled.request_id)
    assert (await replicas.lookup(replicas.a).Lookup(enabled, timeout=30)).document.payload
    registry_changes += 3

    # One log: exported through B as the auditor, it verifies offline with the log's key.
    export = tmp_path / "export.jsonl"
    auditor = replicas.workspace.auditor
    connection = ["--hub", replicas.b, "--ca", str(auditor.ca), "--cert", str(auditor.cert)]
    connection += ["--key", str(auditor.key)]
    for command in (["checkpoint", "--fresh"], ["export", "--out", str(export)]):
        assert await asyncio.to_thread(exchange_cli, ["audit", *command, *connection]) == 0
    result = verify_export(export, replicas.workspace.audit_public_key)
    entries = read_entries(export)
    assert result.entries == len(entries) == result.tree_size
    assert [e["index"] for e in entries] == list(range(len(entries)))
    lookups = [e["request_id"] for e in entries if e["event"] == "lookup"]
    assert sorted(lookups) == sorted(sent), "a call is missing from the log or logged twice"
    kinds = [e["event"] for e in entries]
    assert kinds.count("registry_change") == registry_changes
    assert set(kinds) <= {"lookup", "registry_change", "audit_query"}
    # The auditor's own requests (checkpoint, export) are entries too, when a checkpoint
    # signed meanwhile already covers them.
    assert kinds.count("audit_query") <= 2

    # Both relays, one topic: every index arrives exactly once.
    published = read_topic(kafka_broker.bootstrap, len(entries))
    assert sorted(published) == list(range(len(published))), "an index is missing or doubled"
    assert len(published) >= len(entries)


def read_entries(export: Path) -> list[dict[str, Any]]:
    """The entries of an export file, in file order."""
    lines = (json.loads(line) for line in export.read_text("utf-8").splitlines() if line)
    return [line["entry"] for line in lines if "entry" in line]


def read_topic(bootstrap: str, at_least: int) -> list[int]:
    """The keys (entry indexes) of every record on TOPIC, once it holds `at_least` of them."""
    consumer = KafkaConsumer(
        bootstrap_servers=bootstrap, enable_auto_commit=False, auto_offset_reset="earliest"
    )
    deadline = time.monotonic() + DEADLINE_S
    try:
        while not (partitions := consumer.partitions_for_topic(TOPIC)):
            assert time.monotonic() < deadline, f"topic {TOPIC} never appeared"
            time.sleep(0.2)
            consumer.topics()  # refreshes metadata
        assigned = [TopicPartition(TOPIC, p) for p in sorted(partitions)]
        consumer.assign(assigned)
        consumer.seek_to_beginning(*assigned)
        keys: list[int] = []
        # Read to the end of every partition, and again while the relay is still behind.
        while True:
            ends = consumer.end_offsets(assigned)
            while any(consumer.position(tp) < ends[tp] for tp in assigned):
                assert time.monotonic() < deadline, "could not read the topic to its end"
                for batch in consumer.poll(timeout_ms=200).values():
                    keys.extend(int(record.key) for record in batch)
            if len(keys) >= at_least:
                return keys
            assert time.monotonic() < deadline, f"{len(keys)} of {at_least} entries published"
            time.sleep(0.2)
    finally:
        consumer.close()
