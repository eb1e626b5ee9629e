"""protobuf Timestamps of aware datetimes, without Timestamp.FromDatetime's cost.

FromDatetime() goes through a timetuple and costs about twice as much; receipts and released
documents carry several timestamps each, made per lookup.
"""

from __future__ import annotations

import datetime as dt

from google.protobuf import timestamp_pb2

_EPOCH = dt.datetime(1970, 1, 1, tzinfo=dt.UTC)


def timestamp(moment: dt.datetime) -> timestamp_pb2.Timestamp:
    """A protobuf Timestamp of an aware datetime, to the microsecond."""
    seconds, nanos = seconds_and_nanos(moment)
    return timestamp_pb2.Timestamp(seconds=seconds, nanos=nanos)


def set_timestamp(target: timestamp_pb2.Timestamp, moment: dt.datetime) -> None:
    """Set `target` (a Timestamp field of a message) to an aware datetime, to the microsecond."""
    target.seconds, target.nanos = seconds_and_nanos(moment)


def seconds_and_nanos(moment: dt.datetime) -> tuple[int, int]:
    """Seconds since the epoch and nanoseconds within the second of an aware datetime."""
    since = moment - _EPOCH
    return since.days * 86400 + since.seconds, since.microseconds * 1000
