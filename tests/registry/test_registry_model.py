"""Registry records: proto round trips, audit JSON, and validity windows."""

from __future__ import annotations

import base64
import json
from datetime import UTC, datetime, timedelta

import grpc
import pytest
from registry.registry_catalogue import (
    JAN_2025,
    JAN_2030,
    allowance_grant,
    psb,
    psb_source,
    resident_identity,
)

from exchange.errors import ExchangeError
from exchange.registry import CertificateType, DataSource, Department, Grant, SigningKey, to_json
from exchange.v1 import common_pb2, registry_pb2


def test_records_survive_a_proto_round_trip() -> None:
    department = psb()
    certificate_type = resident_identity()
    data_source = psb_source()
    grant = allowance_grant()

    assert Department.from_proto(department.to_proto()) == department
    assert CertificateType.from_proto(certificate_type.to_proto()) == certificate_type
    assert DataSource.from_proto(data_source.to_proto()) == data_source
    assert Grant.from_proto(grant.to_proto()) == grant
    assert certificate_type.to_proto().sharing_class == common_pb2.UNCONDITIONAL


def test_unset_timestamps_mean_open_and_come_back_as_utc() -> None:
    message = registry_pb2.Grant(id="g-1", fields=["name"])
    assert not message.HasField("valid_from")
    grant = Grant.from_proto(message)
    assert grant.valid_from is None and grant.valid_until is None
    assert not grant.to_proto().HasField("valid_until")

    beijing = allowance_grant()
    back = Grant.from_proto(beijing.to_proto())
    assert back.valid_from == JAN_2025 and back.valid_from.tzinfo == UTC


def test_an_enum_number_the_proto_lacks_becomes_its_number() -> None:
    message = resident_identity().to_proto()
    message.sharing_class = 7  # type: ignore[assignment]
    assert CertificateType.from_proto(message).sharing_class == "7"


def test_audit_json_is_stable_with_the_key_in_base64() -> None:
    department = psb()
    text = to_json(department)

    assert text == to_json(Department.from_proto(department.to_proto()))
    parsed = json.loads(text)
    assert list(parsed) == sorted(parsed)
    key = parsed["signing_keys"][0]
    assert base64.b64decode(key["public_key"]) == department.signing_keys[0].public_key
    assert key["not_before"] == "2025-01-01T00:00:00+00:00"


def test_grant_is_in_force_only_inside_its_window() -> None:
    grant = Grant.from_proto(allowance_grant().to_proto())
    assert not grant.is_valid_at(JAN_2025 - timedelta(microseconds=1))
    assert grant.is_valid_at(JAN_2025)
    assert grant.is_valid_at(datetime(2027, 6, 1, tzinfo=UTC))
    assert not grant.is_valid_at(JAN_2030)


def test_signing_key_window_is_open_where_unset() -> None:
    key = SigningKey(key_id="k", public_key=b"\x00" * 32, not_after=JAN_2030)
    assert key.is_valid_at(datetime(1990, 1, 1, tzinfo=UTC))
    assert not key.is_valid_at(JAN_2030)


def test_a_timestamp_out_of_range_is_an_invalid_argument_naming_the_field() -> None:
    message = registry_pb2.Grant(id="g-1", certificate_type="resident_identity")
    message.valid_until.seconds = 2**62

    with pytest.raises(ExchangeError) as refused:
        Grant.from_proto(message)

    assert refused.value.status == grpc.StatusCode.INVALID_ARGUMENT
    assert refused.value.message == "valid_until: timestamp out of range"
