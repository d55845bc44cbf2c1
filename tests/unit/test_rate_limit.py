"""Token buckets: the connect rate per address and the message rate per connection and user."""

from __future__ import annotations

import pytest

from chime_actors.gateway.rate_limit import MAX_KEYS, KeyedBuckets, MessageRate, TokenBucket
from tests.support.clock import FakeClock


def test_a_bucket_allows_a_burst_then_refills_evenly() -> None:
    bucket = TokenBucket(5, now=0.0)
    assert [bucket.take(0.0) for _ in range(5)] == [None] * 5
    assert bucket.take(0.0) == pytest.approx(2.0)  # 10 s / 5 tokens
    assert bucket.take(1.0) == pytest.approx(1.0)
    assert bucket.take(2.0) is None
    assert bucket.take(2.0) is not None


def test_keyed_buckets_are_bounded_and_evict_the_least_recent() -> None:
    clock = FakeClock(1000.0)
    table = KeyedBuckets(1, clock)
    for n in range(MAX_KEYS + 10):
        table.take(f"a{n}")
    assert len(table) == MAX_KEYS
    assert table.take("a0") is None  # evicted, so a full bucket again
    assert table.take(f"a{MAX_KEYS + 9}") is not None  # still tracked, still empty


def test_zero_means_no_limit() -> None:
    clock = FakeClock(1000.0)
    assert all(KeyedBuckets(0, clock).take("x") is None for _ in range(1000))
    connection = MessageRate(0, clock).for_connection()
    assert all(connection.check("alice") is None for _ in range(1000))


def test_a_connection_is_refused_past_the_limit_with_retry_after() -> None:
    clock = FakeClock(1000.0)
    connection = MessageRate(10, clock).for_connection()
    assert [connection.check("alice") for _ in range(10)] == [None] * 10
    limited = connection.check("alice")
    assert limited is not None and not limited.close
    assert limited.retry_after_ms == 1000  # one token per second at 10 per 10 s
    clock.now += 1.0
    assert connection.check("alice") is None


def test_a_connection_that_keeps_flooding_past_twice_the_limit_is_closed() -> None:
    clock = FakeClock(1000.0)
    connection = MessageRate(10, clock).for_connection()
    verdicts = [connection.check("alice") for _ in range(21)]
    assert verdicts[:10] == [None] * 10
    assert all(v is not None and not v.close for v in verdicts[10:20])
    last = verdicts[20]
    assert last is not None and last.close


def test_the_user_bucket_is_shared_by_the_users_connections() -> None:
    clock = FakeClock(1000.0)
    rate = MessageRate(10, clock)
    first, second, other = rate.for_connection(), rate.for_connection(), rate.for_connection()
    assert [first.check("alice") for _ in range(6)] == [None] * 6
    assert [second.check("alice") for _ in range(4)] == [None] * 4
    assert second.check("alice") is not None  # alice used her 10 across two connections
    assert other.check("bob") is None  # bob has his own


def test_a_refused_frame_uses_no_token() -> None:
    clock = FakeClock(1000.0)
    rate = MessageRate(2, clock)
    busy, idle = rate.for_connection(), rate.for_connection()
    assert [busy.check("alice") for _ in range(2)] == [None, None]
    # busy's refusals must not drain alice's bucket further than her two frames did.
    for _ in range(2):
        assert busy.check("alice") is not None
    clock.now += 5.0  # one token back for alice and for each connection
    assert idle.check("alice") is None
