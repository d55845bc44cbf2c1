"""Tests for chime_actors.records.format_timestamp: the wire's one time format."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone

from chime_actors.records import format_timestamp


def test_milliseconds_are_truncated_and_the_zone_is_z() -> None:
    moment = datetime(2026, 11, 27, 10, 0, 0, 999_999, tzinfo=UTC)
    assert format_timestamp(moment) == "2026-11-27T10:00:00.999Z"
    assert format_timestamp(moment.replace(microsecond=0)) == "2026-11-27T10:00:00.000Z"


def test_another_zone_is_converted_to_utc() -> None:
    moment = datetime(2026, 1, 1, 1, 30, 0, 5_000, tzinfo=timezone(timedelta(hours=2)))
    assert format_timestamp(moment) == "2025-12-31T23:30:00.005Z"


def test_the_width_is_fixed_so_text_order_is_time_order() -> None:
    # Stores compare these as strings (dedupe windows, sweeps): a year below
    # 1000 must be padded too, which glibc's strftime("%Y") did not do.
    early = format_timestamp(datetime(999, 12, 31, 23, 59, 59, tzinfo=UTC))
    later = format_timestamp(datetime(1000, 1, 1, tzinfo=UTC))
    assert early == "0999-12-31T23:59:59.000Z"
    assert len(early) == len(later) and early < later
