"""FetchStream, the way the hub calls a node: many fetches on one open stream, each answered
by call_id when it is done, a failed one as its own status without ending the stream."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import itertools
from collections.abc import AsyncIterator, Mapping
from pathlib import Path
from typing import Any

import grpc
import grpc.aio
import pytest
from adapter_world import (
    LI,
    NOBODY,
    ZHANG,
    adapter_client,
    fetch_request,
    file_type,
    write_config,
    write_csv,
)
from pki_fixture import TestPki

from adapters.backends import Backend, Record
from adapters.config import AdapterConfig
from adapters.node import MAX_RESPONSE_BYTES, AdapterServicer, build_adapter_server
from adapters.signing import DocumentSigner
from audit.events import SubjectId
from exchange.pki import load_signing_key
from exchange.tls import TlsFiles
from exchange.v1 import adapter_pb2, common_pb2


class SlowFor(Backend):
    """Another backend's records, with the answer about one subject held back for a while."""

    def __init__(self, inner: Backend, subject_id: str, seconds: float) -> None:
        self.inner, self.subject_id, self.seconds = inner, subject_id, seconds
        self.holding = asyncio.Event()  # set once an answer is being held back
        self.started = 0  # fetches begun

    @classmethod
    def from_options(cls, options: Mapping[str, Any], base_dir: Path) -> Backend:
        raise NotImplementedError("built in the test")

    async def fetch(self, certificate_type: str, subject: SubjectId) -> Record | None:
        self.started += 1
        if subject.id == self.subject_id:
            self.holding.set()
            await asyncio.sleep(self.seconds)
        return await self.inner.fetch(certificate_type, subject)

    def served_types(self) -> dict[str, tuple[str, ...]]:
        return self.inner.served_types()

    async def close(self) -> None:
        await self.inner.close()


class TimesOutFor(SlowFor):
    """A backend whose own client times out for one subject (its socket, say)."""

    async def fetch(self, certificate_type: str, subject: SubjectId) -> Record | None:
        if subject.id == self.subject_id:
            raise TimeoutError("the registry database did not answer")
        return await self.inner.fetch(certificate_type, subject)


class HugeFor(SlowFor):
    """A backend whose record about one subject is larger than any message may be."""

    async def fetch(self, certificate_type: str, subject: SubjectId) -> Record | None:
        record = await self.inner.fetch(certificate_type, subject)
        if record is None or subject.id != self.subject_id:
            return record
        return dataclasses.replace(record, fields={**record.fields, "name": "张" * (2 << 20)})


def psb_config(tmp_path: Path, pki: TestPki) -> AdapterConfig:
    """A PSB node over a CSV file."""
    write_csv(tmp_path / "residents.csv")
    return AdapterConfig.from_file(
        write_config(tmp_path, pki, 'kind = "files"\n' + file_type(Path("residents.csv")))
    )


def servicer_over(config: AdapterConfig, backend: Backend) -> AdapterServicer:
    """The node's AdapterService alone, called directly, with no server around it."""
    return AdapterServicer(
        config.department, backend, DocumentSigner(load_signing_key(config.signing_key))
    )


async def endless_calls(request: adapter_pb2.FetchRequest) -> AsyncIterator[adapter_pb2.FetchCall]:
    """A hub that keeps sending calls, as fast as the node reads them."""
    for call_id in itertools.count(1):
        yield call(call_id, request)
        await asyncio.sleep(0)


@contextlib.asynccontextmanager
async def running(
    tmp_path: Path,
    pki: TestPki,
    slow_subject: str = "",
    seconds: float = 2.0,
    backend_type: type[SlowFor] = SlowFor,
) -> AsyncIterator[tuple[int, grpc.aio.Server, SlowFor]]:
    """A PSB node over a CSV file, answers about `slow_subject` held back `seconds` (or as
    `backend_type` treats them)."""
    config = psb_config(tmp_path, pki)
    backend = backend_type(config.load_backend(), slow_subject, seconds)
    server, port = build_adapter_server(config, backend)
    await server.start()
    try:
        yield port, server, backend
    finally:
        await server.stop(None)
        await backend.close()


@contextlib.asynccontextmanager
async def node(tmp_path: Path, pki: TestPki, slow_subject: str = "") -> AsyncIterator[int]:
    """The port of a running PSB node (see `running`)."""
    async with running(tmp_path, pki, slow_subject) as (port, _, _):
        yield port


def call(call_id: int, request: adapter_pb2.FetchRequest, timeout_ms: int = 5000) -> Any:
    return adapter_pb2.FetchCall(call_id=call_id, request=request, timeout_ms=timeout_ms)


async def results_of(
    port: int, tls: TlsFiles, calls: list[adapter_pb2.FetchCall]
) -> list[adapter_pb2.FetchResult]:
    """Send `calls` on one stream; the results in the order they came back."""
    async with adapter_client(port, tls) as stub:
        stream = stub.FetchStream()
        for each in calls:
            await stream.write(each)
        results = [await stream.read() for _ in calls]
        await stream.done_writing()
    return results


async def test_each_call_is_answered_under_its_call_id_and_a_failure_ends_only_itself(
    tmp_path: Path, pki: TestPki, hub_tls: TlsFiles
) -> None:
    async with node(tmp_path, pki) as port:
        results = await results_of(
            port,
            hub_tls,
            [
                call(7, fetch_request(ZHANG, request_id="req-7")),
                call(8, fetch_request(NOBODY)),
                call(9, fetch_request(ZHANG, fields=("name",), request_id="req-9")),
                call(10, fetch_request(ZHANG, fields=("criminal_record",))),
            ],
        )

    by_id = {result.call_id: result for result in results}
    assert sorted(by_id) == [7, 8, 9, 10]
    first = common_pb2.Document.FromString(by_id[7].response.document.payload)
    assert first.request_id == "req-7"
    assert first.fields["name"] == "张伟"
    only_name = common_pb2.Document.FromString(by_id[9].response.document.payload)
    assert dict(only_name.fields) == {"name": "张伟"}
    assert by_id[8].WhichOneof("outcome") == "status"
    assert by_id[8].status.code == grpc.StatusCode.NOT_FOUND.value[0]
    assert by_id[8].status.message == "no resident_identity record for this subject"
    assert by_id[10].status.code == grpc.StatusCode.INVALID_ARGUMENT.value[0]
    assert "'criminal_record'" in by_id[10].status.message


async def test_a_record_too_large_to_send_fails_alone_not_the_stream(
    tmp_path: Path, pki: TestPki, hub_tls: TlsFiles
) -> None:
    # 6 MiB of name: past the hub's 4 MiB receive limit, which would end the whole stream.
    async with running(tmp_path, pki, ZHANG, backend_type=HugeFor) as (port, _, _):
        results = await results_of(
            port, hub_tls, [call(1, fetch_request(ZHANG)), call(2, fetch_request(LI))]
        )

    by_id = {result.call_id: result for result in results}
    assert by_id[2].WhichOneof("outcome") == "response"
    assert by_id[1].status.code == grpc.StatusCode.RESOURCE_EXHAUSTED.value[0]
    assert by_id[1].status.message.startswith("the signed resident_identity record is ")
    assert by_id[1].status.message.endswith(
        f"more than the {MAX_RESPONSE_BYTES} a response may carry"
    )


async def test_a_call_without_a_timeout_is_refused_naming_it(
    tmp_path: Path, pki: TestPki, hub_tls: TlsFiles
) -> None:
    async with node(tmp_path, pki) as port:
        (result,) = await results_of(port, hub_tls, [call(1, fetch_request(ZHANG), timeout_ms=0)])

    assert result.status.code == grpc.StatusCode.INVALID_ARGUMENT.value[0]
    assert result.status.message == "timeout_ms: required"


async def test_a_slow_call_does_not_hold_back_the_others_and_ends_at_its_timeout(
    tmp_path: Path, pki: TestPki, hub_tls: TlsFiles
) -> None:
    async with node(tmp_path, pki, slow_subject=LI) as port:
        results = await results_of(
            port,
            hub_tls,
            [call(1, fetch_request(LI), timeout_ms=300), call(2, fetch_request(ZHANG))],
        )

    assert [result.call_id for result in results] == [2, 1]  # answered as they were done
    assert results[0].WhichOneof("outcome") == "response"
    assert results[1].status.code == grpc.StatusCode.DEADLINE_EXCEEDED.value[0]
    assert results[1].status.message == "no answer within 300 ms"


async def test_a_department_cannot_open_a_stream(
    tmp_path: Path, pki: TestPki, department_tls: TlsFiles
) -> None:
    async with node(tmp_path, pki) as port:
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await results_of(port, department_tls, [call(1, fetch_request(ZHANG))])

    assert caught.value.code() == grpc.StatusCode.PERMISSION_DENIED
    assert caught.value.details() == "only the hub may call an adapter node"


async def test_at_shutdown_a_stream_ends_once_the_calls_it_took_are_answered(
    tmp_path: Path, pki: TestPki, hub_tls: TlsFiles
) -> None:
    async with (
        running(tmp_path, pki, slow_subject=LI, seconds=0.5) as (port, server, backend),
        adapter_client(port, hub_tls) as stub,
    ):
        stream = stub.FetchStream()
        await stream.write(call(1, fetch_request(LI)))
        await backend.holding.wait()  # the node has taken the call

        # A grace far longer than the test may take: the stream must end without using it.
        stopping = asyncio.create_task(server.stop(600))
        async with asyncio.timeout(60):
            answered = await stream.read()
            ended = await stream.read()
            await stopping

        assert answered.call_id == 1
        assert common_pb2.Document.FromString(answered.response.document.payload).fields
        assert ended is grpc.aio.EOF
        assert await stream.code() == grpc.StatusCode.OK


async def test_a_hub_that_reads_no_answers_gets_no_more_calls_started(
    tmp_path: Path, pki: TestPki, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A slot is held until the answer is sent, so unsent answers cannot pile up in the node.
    monkeypatch.setattr("adapters.node.MAX_CALLS_IN_FLIGHT", 4)
    config = psb_config(tmp_path, pki)
    backend = SlowFor(config.load_backend(), "", 0)
    answers = servicer_over(config, backend).FetchStream(
        endless_calls(fetch_request(ZHANG)), context=None
    )
    try:
        first = await anext(answers)  # then the hub reads nothing more
        await asyncio.sleep(0.5)  # time for the node to start all it would
    finally:
        await answers.aclose()  # type: ignore[attr-defined]
        await backend.close()

    assert first.WhichOneof("outcome") == "response"
    assert backend.started == 4  # the one read, and three waiting to be sent, hold the slots


async def test_a_backend_timing_out_by_itself_is_an_internal_error_not_the_deadline(
    tmp_path: Path, pki: TestPki, hub_tls: TlsFiles
) -> None:
    async with running(tmp_path, pki, slow_subject=LI, backend_type=TimesOutFor) as (port, _, _):
        (result,) = await results_of(port, hub_tls, [call(1, fetch_request(LI))])

    assert result.status.code == grpc.StatusCode.INTERNAL.value[0]
    assert result.status.message == "internal error"  # the detail goes to the node's log


async def test_a_stream_opened_just_before_a_drain_still_ends(tmp_path: Path, pki: TestPki) -> None:
    config = psb_config(tmp_path, pki)
    backend = SlowFor(config.load_backend(), "", 0)
    servicer = servicer_over(config, backend)
    never: asyncio.Event = asyncio.Event()

    async def hub_says_nothing() -> AsyncIterator[adapter_pb2.FetchCall]:
        await never.wait()
        yield call(1, fetch_request(ZHANG))

    answers = servicer.FetchStream(hub_says_nothing(), context=None)
    first = asyncio.ensure_future(anext(answers))
    await asyncio.sleep(0)  # the stream has begun; its reading task has not yet run
    servicer.drain()
    try:
        async with asyncio.timeout(10):
            with pytest.raises(StopAsyncIteration):
                await first
    finally:
        await backend.close()
