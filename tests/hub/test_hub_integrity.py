"""A rogue adapter node: whatever it returns that the issuer did not sign for this request is
withheld (DATA_LOSS) and audited as an integrity failure.

The rogue is a real AdapterService on real mTLS, holding PSB's node certificate and, for most
tricks, PSB's real signing key: the hub must catch it by checking what was signed, not who
answered.
"""

from __future__ import annotations

import asyncio
import datetime as dt
from collections.abc import AsyncIterator
from typing import Any

import grpc
import grpc.aio
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from hub_world import LI, HubWorld, lookup_request

from exchange.pki import key_id_for, load_public_key_raw, load_signing_key
from exchange.tls import server_credentials
from exchange.v1 import adapter_pb2, adapter_pb2_grpc, audit_pb2, common_pb2, registry_pb2

HONEST_FIELDS = {"name": "张伟", "birth_date": "1990-05-17", "address": "北京市东城区景山前街4号"}


class RogueAdapter(adapter_pb2_grpc.AdapterServiceServicer):  # type: ignore[misc]
    """Answers every Fetch with a document altered according to `trick`.

    It has no FetchStream, like a node of an older version: the hub reaches it through its
    fallback to unary Fetch, so these tests also show that fallback working.
    """

    def __init__(self, key: Ed25519PrivateKey, key_id: str, impostor: Ed25519PrivateKey) -> None:
        self.key, self.key_id, self.impostor = key, key_id, impostor
        self.trick = "honest"

    async def Fetch(self, request: adapter_pb2.FetchRequest, context: Any) -> Any:
        document = common_pb2.Document(
            document_id="PSB-2019-0001",
            certificate_type=request.certificate_type,
            subject=request.subject,
            issuer="PSB",
            fields={name: HONEST_FIELDS[name] for name in request.fields},
            request_id=request.request_id,
        )
        document.issued_at.FromDatetime(dt.datetime(2019, 3, 1, tzinfo=dt.UTC))
        document.signed_at.FromDatetime(dt.datetime.now(dt.UTC))
        key, key_id = self.key, self.key_id
        trick = self.trick
        if trick == "slow":
            await asyncio.sleep(60)
        if trick == "extra-field":
            document.fields["ethnicity"] = "汉"
        elif trick == "other-subject":
            document.subject.id = LI
        elif trick == "stale-request-id":
            document.request_id = "an-earlier-request"
        elif trick == "other-type":
            document.certificate_type = "criminal_record"
        elif trick == "other-issuer":
            document.issuer = "AMR"
        elif trick == "expired":
            document.valid_until.FromDatetime(dt.datetime(2020, 1, 1, tzinfo=dt.UTC))
        elif trick == "backdated":
            # As a holder of a retired key would: claim a signing time inside its window.
            document.signed_at.FromDatetime(dt.datetime(2019, 3, 1, tzinfo=dt.UTC))
        elif trick == "absurd-time":
            document.valid_until.seconds = 2**62
        elif trick == "bad-signature":
            key = self.impostor  # signed by someone else, claiming PSB's key id
        elif trick == "unknown-key":
            key = self.impostor
            key_id = key_id_for(_raw(self.impostor))
        payload = document.SerializeToString()
        if trick == "not-a-document":
            payload = b"\xff\xff\xff"
        elif trick == "hidden-field":
            payload += _text_field(15, "ethnicity=汉")
        elif trick == "hidden-in-subject":
            payload += b"\x1a" + _length_delimited(_text_field(9, "ethnicity=汉"))
        elif trick == "field-given-twice":  # parsers keep the last document_id; some the first
            payload = _text_field(1, "ethnicity=汉") + payload
        signature = key.sign(payload)
        if trick == "tampered":
            document.fields["name"] = "王芳"
            payload = document.SerializeToString()
        signed = common_pb2.SignedDocument(
            payload=payload,
            key_id=key_id,
            algorithm="x" * 200_000 if trick == "huge-algorithm" else "Ed25519",
            signature=signature,
        )
        if trick == "unsigned-beside":
            signed.MergeFromString(_text_field(9, "ethnicity=汉"))
        return adapter_pb2.FetchResponse(document=signed)


def _text_field(number: int, text: str) -> bytes:
    """Field `number` holding `text`, as protobuf writes a string (length-delimited)."""
    return bytes([number << 3 | 2]) + _length_delimited(text.encode())


def _length_delimited(data: bytes) -> bytes:
    assert len(data) < 128
    return bytes([len(data)]) + data


def _raw(key: Ed25519PrivateKey) -> bytes:
    return key.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


@pytest.fixture
async def rogue(world: HubWorld) -> AsyncIterator[RogueAdapter]:
    """A rogue node with PSB's node certificate and key, registered as PSB's only replica."""
    pki = world.pki
    signing = pki.signing_key("psb")
    adapter = RogueAdapter(
        load_signing_key(signing.private),
        key_id_for(load_public_key_raw(signing.public)),
        load_signing_key(pki.signing_key("impostor").private),
    )
    server = grpc.aio.server()
    adapter_pb2_grpc.add_AdapterServiceServicer_to_server(adapter, server)
    port = server.add_secure_port(
        "127.0.0.1:0", server_credentials(pki.identity("psb-adapter", "adapter", "PSB"))
    )
    await server.start()
    await world.set_endpoints("psb-population", [f"127.0.0.1:{port}"])
    yield adapter
    await server.stop(None)


async def test_the_rogue_node_played_straight_is_believed(
    world: HubWorld, rogue: RogueAdapter
) -> None:
    response = await world.lookup().Lookup(lookup_request())
    document = common_pb2.Document.FromString(response.document.payload)
    assert dict(document.fields) == {"name": "张伟", "birth_date": "1990-05-17"}


@pytest.mark.parametrize(
    ("trick", "message"),
    [
        ("tampered", "issuer signature did not verify"),
        ("bad-signature", "issuer signature did not verify"),
        ("unknown-key", "is not registered for 'PSB'"),
        ("not-a-document", "signed payload is not a Document"),
        ("extra-field", "document carries fields not released: ethnicity"),
        ("other-subject", "document is about another subject"),
        ("stale-request-id", "document answers another request"),
        ("other-type", "document is a 'criminal_record'"),
        ("other-issuer", "document issuer 'AMR' is not 'PSB'"),
        ("expired", "document validity has ended"),
        ("backdated", "document was not signed for this request just now"),
        ("absurd-time", "document has an invalid timestamp"),
        ("hidden-field", "signed payload holds more than a Document: a field unknown"),
        ("hidden-in-subject", "signed payload holds more than a Document: a field unknown"),
        ("field-given-twice", "signed payload holds more than a Document: a field unknown"),
        ("huge-algorithm", "unsupported signature algorithm 'xxxxxxxx"),
    ],
)
async def test_a_document_the_issuer_did_not_sign_for_this_request_is_withheld(
    world: HubWorld, rogue: RogueAdapter, trick: str, message: str
) -> None:
    rogue.trick = trick

    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await world.lookup().Lookup(lookup_request())

    error = caught.value
    assert error.code() == grpc.StatusCode.DATA_LOSS
    assert message in error.details()
    assert "张伟" not in error.details() and "王芳" not in error.details()
    assert len(error.details()) < 200
    entry = await world.last_entry(event="lookup")
    assert entry.outcome == audit_pb2.FAILED
    assert entry.status == "DATA_LOSS"
    assert entry.reason == f"integrity: {error.details()}"
    assert entry.fields_released == []
    assert entry.document_digest == ""


async def test_nothing_a_node_puts_beside_the_signed_document_reaches_the_caller(
    world: HubWorld, rogue: RogueAdapter
) -> None:
    rogue.trick = "unsigned-beside"

    response = await world.lookup().Lookup(lookup_request())

    assert "汉".encode() not in response.SerializeToString()
    document = common_pb2.Document.FromString(response.document.payload)
    assert dict(document.fields) == {"name": "张伟", "birth_date": "1990-05-17"}


async def test_a_signing_key_outside_its_window_does_not_verify(
    world: HubWorld, rogue: RogueAdapter
) -> None:
    registry = world.registry()
    listing = await registry.ListDepartments(registry_pb2.ListDepartmentsRequest())
    (psb,) = [d for d in listing.departments if d.code == "PSB"]
    psb.signing_keys[0].not_after.FromDatetime(dt.datetime(2021, 1, 1, tzinfo=dt.UTC))
    await registry.UpdateDepartment(psb)

    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await world.lookup().Lookup(lookup_request())

    assert caught.value.code() == grpc.StatusCode.DATA_LOSS
    assert "was not valid when the document was signed" in caught.value.details()


async def test_a_node_too_slow_for_the_callers_deadline_is_deadline_exceeded(
    world: HubWorld, rogue: RogueAdapter
) -> None:
    rogue.trick = "slow"

    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await world.lookup().Lookup(lookup_request(request_id="in-a-hurry"), timeout=2)

    assert caught.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    # The hub stops waiting a little before the caller does, so the failure is on record.
    entry = await world.last_entry(event="lookup")
    assert (entry.request_id, entry.status) == ("in-a-hurry", "DEADLINE_EXCEEDED")
    assert entry.outcome == audit_pb2.FAILED
