"""How the end of a call is written down: its audit outcome, and the receipt a failed call carries.

Shared by the gate (calls refused before any handler ran) and the lookup path, so a status
means the same outcome in every entry and a refused caller always finds its receipt under the
same trailing-metadata key.
"""

from __future__ import annotations

import grpc

from audit.events import Outcome
from exchange.v1 import lookup_pb2

# Trailing metadata of a failed call: its serialized audit Receipt (lookup.proto).
RECEIPT_METADATA_KEY = "exchange-receipt-bin"
# Trailing metadata of a failed lookup: the request id it was logged under.
REQUEST_ID_METADATA_KEY = "exchange-request-id"

# Statuses that mean "something broke" rather than "identity, policy or the request said no".
_FAILURES = frozenset(
    {
        grpc.StatusCode.UNAVAILABLE,
        grpc.StatusCode.DEADLINE_EXCEEDED,
        grpc.StatusCode.DATA_LOSS,
        grpc.StatusCode.INTERNAL,
        grpc.StatusCode.CANCELLED,
        grpc.StatusCode.UNKNOWN,
    }
)


def outcome_of(status: grpc.StatusCode) -> Outcome:
    """The audit outcome of a call that ended with `status`."""
    if status is grpc.StatusCode.OK:
        return Outcome.GRANTED
    return Outcome.FAILED if status in _FAILURES else Outcome.REFUSED


def failure_metadata(
    receipt: lookup_pb2.Receipt, request_id: str = ""
) -> tuple[tuple[str, str | bytes], ...]:
    """Trailing metadata for a failed call: its receipt, and its request id when it has one."""
    metadata: list[tuple[str, str | bytes]] = [(RECEIPT_METADATA_KEY, receipt.SerializeToString())]
    # Plain metadata values must be printable ASCII; an id that is not was refused anyway.
    if request_id and request_id.isascii() and request_id.isprintable():
        metadata.append((REQUEST_ID_METADATA_KEY, request_id))
    return tuple(metadata)
