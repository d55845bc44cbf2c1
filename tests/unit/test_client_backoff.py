"""Reconnect delays: exponential, jittered, bounded; tested with an injected clock and random."""

from __future__ import annotations

import pytest

from chime_actors.client.backoff import Backoff, Reconnector
from tests.support.clock import FakeClock


def test_bounds_grow_by_the_factor_up_to_the_cap() -> None:
    backoff = Backoff(initial_s=0.5, factor=2, max_s=5, jitter=0.5)
    assert [backoff.bound(n) for n in range(6)] == [0.5, 1, 2, 4, 5, 5]
    assert backoff.bound(10_000) == 5  # no overflow however long it goes on


@pytest.mark.parametrize("rand", [0.0, 0.25, 0.999999])
def test_jitter_stays_within_half_the_bound_and_the_bound(rand: float) -> None:
    backoff = Backoff(initial_s=1, factor=2, max_s=30, jitter=0.5)
    for attempt in range(12):
        bound = backoff.bound(attempt)
        delay = backoff.delay(attempt, rand)
        assert bound / 2 <= delay <= bound <= 30


def test_no_jitter_gives_the_bound() -> None:
    assert Backoff(initial_s=1, jitter=0).delay(3, 0.7) == 8


@pytest.mark.parametrize(
    "kwargs",
    [{"initial_s": 0}, {"initial_s": 5, "max_s": 1}, {"factor": 0.5}, {"jitter": 1.5}],
)
def test_nonsense_settings_are_refused(kwargs: dict[str, float]) -> None:
    with pytest.raises(ValueError, match="backoff"):
        Backoff(**kwargs)


def test_failed_attempts_in_a_row_back_off_then_give_up() -> None:
    rands = iter([0.0, 0.5, 0.0])
    reconnector = Reconnector(
        Backoff(initial_s=1, factor=2, max_s=60, jitter=0.5),
        max_attempts=3,
        clock=FakeClock(100.0),
        rand=lambda: next(rands),
    )
    assert [reconnector.next_delay() for _ in range(3)] == [1.0, 1.5, 4.0]
    assert reconnector.next_delay() is None
    assert reconnector.attempts == 3


def test_a_stable_connection_starts_the_count_again() -> None:
    clock = FakeClock(100.0)
    reconnector = Reconnector(
        Backoff(initial_s=1, jitter=0), stable_s=5, clock=clock, rand=lambda: 0.0
    )
    assert [reconnector.next_delay() for _ in range(3)] == [1, 2, 4]
    reconnector.opened()
    clock.now += 5
    assert reconnector.next_delay() == 1


def test_a_connection_dropped_at_once_keeps_backing_off() -> None:
    clock = FakeClock(100.0)
    reconnector = Reconnector(
        Backoff(initial_s=1, jitter=0), stable_s=5, clock=clock, rand=lambda: 0.0
    )
    delays = []
    for _ in range(4):
        reconnector.opened()
        clock.now += 0.1  # accepted, then dropped straight away
        delays.append(reconnector.next_delay())
    assert delays == [1, 2, 4, 8]
